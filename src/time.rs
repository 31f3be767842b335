//! Instants as they travel and as they are shown: UTC with nanoseconds.
//!
//! Last-modified times cross the wire as RFC 3339 text in UTC with nine fractional digits
//! (`2026-11-21T09:00:03.123456789Z`), so that no precision is lost between boxes and the
//! JSON output needs no conversion.

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, Local, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time with nanosecond precision, serialized as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp(Utc::now())
    }

    /// Converts a file system time (which may predate 1970).
    pub fn from_system(time: SystemTime) -> Timestamp {
        Timestamp(DateTime::<Utc>::from(time))
    }

    /// Converts back for setting a file's modification time.
    pub fn to_system(self) -> SystemTime {
        SystemTime::from(self.0)
    }

    /// The wire and JSON form: RFC 3339, UTC, nanoseconds.
    pub fn to_rfc3339(self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }

    /// The human form in local time: `2026-11-21 10:00:03`.
    pub fn to_local_string(self) -> String {
        self.0
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    }

    /// Nanoseconds since the Unix epoch (saturating), for compact comparisons and caches.
    pub fn unix_nanos(self) -> i64 {
        self.0
            .timestamp_nanos_opt()
            .unwrap_or(if self.0.timestamp() < 0 {
                i64::MIN
            } else {
                i64::MAX
            })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON form keeps all nine fractional digits and round-trips exactly.
    #[test]
    fn round_trips_with_nanoseconds() {
        let t: Timestamp = serde_json::from_str("\"2026-11-21T09:00:03.123456789Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-11-21T09:00:03.123456789Z\""
        );
        assert_eq!(Timestamp::from_system(t.to_system()), t);
    }
}
