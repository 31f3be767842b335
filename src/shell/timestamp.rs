//! Timestamps as people type them for `index shortlist`.
//!
//! Accepted: RFC 3339 (`2026-11-21T10:00:00Z`), `YYYY-MM-DD[ HH:MM[:SS]]` (also with `T`)
//! in local time, Unix seconds (`@1763719200`) and the original assignment's slash form
//! `YYYY/MM/DD/HH/MM/SS`, any prefix of it (`2026/11/21`).
//!
//! A timestamp names a span as wide as its precision: `2026-11-21` is that whole day. As a
//! start it means the first instant of the span, as an end the last, so that
//! `shortlist 2026-11-20 2026-11-21` includes everything modified on the 21st.

use chrono::{
    DateTime, Duration, Local, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone, Utc,
};
use thiserror::Error;

use crate::time::Timestamp;

/// Which end of a range a timestamp is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The first instant of the span it names.
    Start,
    /// The last instant of the span it names.
    End,
}

/// Why a typed timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimestampError {
    /// Not in any accepted form.
    #[error(
        "bad timestamp '{0}': use 2026-11-21T10:00:00Z, '2026-11-21 10:00[:00]', 2026-11-21, @1763719200 or 2026/11/21/10/00/00"
    )]
    Unrecognized(String),
    /// In an accepted form but not a real date or time.
    #[error("bad timestamp '{0}': no such date or time")]
    Invalid(String),
    /// Falls in a daylight-saving gap of the local time zone.
    #[error("bad timestamp '{0}': that local time does not exist (daylight-saving change)")]
    Skipped(String),
}

/// How precisely a timestamp was written: the width of the span it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Written with a fraction: exactly that instant.
    Exact,
}

/// Reads `text` as the `bound` end of a time range.
pub fn parse(text: &str, bound: Bound) -> Result<Timestamp, TimestampError> {
    let text = text.trim();
    let unrecognized = || TimestampError::Unrecognized(text.to_string());
    if let Some(seconds) = text.strip_prefix('@') {
        let seconds: i64 = seconds.parse().map_err(|_| unrecognized())?;
        let start = DateTime::<Utc>::from_timestamp(seconds, 0)
            .ok_or_else(|| TimestampError::Invalid(text.to_string()))?;
        return Ok(Timestamp(widen(start, Unit::Second, bound, text)?));
    }
    if let Ok(exact) = DateTime::parse_from_rfc3339(text) {
        let unit = if text.contains('.') {
            Unit::Exact
        } else {
            Unit::Second
        };
        return Ok(Timestamp(widen(
            exact.with_timezone(&Utc),
            unit,
            bound,
            text,
        )?));
    }
    let (fields, unit) = local_fields(text).ok_or_else(unrecognized)?;
    let [year, month, day, hour, minute, second] = fields;
    let naive = NaiveDate::from_ymd_opt(year as i32, month, day)
        .and_then(|date| date.and_hms_opt(hour, minute, second))
        .ok_or_else(|| TimestampError::Invalid(text.to_string()))?;
    let start = to_utc(naive, bound, text)?;
    Ok(Timestamp(widen(start, unit, bound, text)?))
}

/// Splits the local forms into year, month, day, hour, minute, second (missing ones at
/// their first value) and the precision written.
fn local_fields(text: &str) -> Option<([u32; 6], Unit)> {
    let numbers: Vec<&str> = if text.contains('/') {
        text.split('/').collect()
    } else {
        let (date, time) = match text.split_once([' ', 'T']) {
            Some((date, time)) => (date, Some(time)),
            None => (text, None),
        };
        let mut parts: Vec<&str> = date.split('-').collect();
        if parts.len() != 3 {
            return None;
        }
        if let Some(time) = time {
            let time: Vec<&str> = time.split(':').collect();
            if !(2..=3).contains(&time.len()) {
                return None;
            }
            parts.extend(time);
        }
        parts
    };
    if numbers.is_empty() || numbers.len() > 6 {
        return None;
    }
    let mut fields = [0, 1, 1, 0, 0, 0];
    for (i, number) in numbers.iter().enumerate() {
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.len() > 4 {
            return None;
        }
        fields[i] = number.parse().ok()?;
    }
    let unit = [
        Unit::Year,
        Unit::Month,
        Unit::Day,
        Unit::Hour,
        Unit::Minute,
        Unit::Second,
    ][numbers.len() - 1];
    Some((fields, unit))
}

/// Converts a local wall-clock time; an ambiguous one (clocks going back) takes the
/// earlier instant for a start and the later for an end.
fn to_utc(naive: NaiveDateTime, bound: Bound, text: &str) -> Result<DateTime<Utc>, TimestampError> {
    match Local.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(early, late) => Ok(match bound {
            Bound::Start => early,
            Bound::End => late,
        }
        .with_timezone(&Utc)),
        LocalResult::None => Err(TimestampError::Skipped(text.to_string())),
    }
}

/// For an end bound, moves from the start of the span to its last nanosecond.
fn widen(
    start: DateTime<Utc>,
    unit: Unit,
    bound: Bound,
    text: &str,
) -> Result<DateTime<Utc>, TimestampError> {
    if bound == Bound::Start || unit == Unit::Exact {
        return Ok(start);
    }
    let invalid = || TimestampError::Invalid(text.to_string());
    let next = match unit {
        Unit::Year => start.checked_add_months(Months::new(12)),
        Unit::Month => start.checked_add_months(Months::new(1)),
        Unit::Day => start.checked_add_signed(Duration::days(1)),
        Unit::Hour => start.checked_add_signed(Duration::hours(1)),
        Unit::Minute => start.checked_add_signed(Duration::minutes(1)),
        Unit::Second | Unit::Exact => start.checked_add_signed(Duration::seconds(1)),
    }
    .ok_or_else(invalid)?;
    next.checked_sub_signed(Duration::nanoseconds(1))
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
        let naive = NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap();
        Timestamp(
            Local
                .from_local_datetime(&naive)
                .earliest()
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    /// Each accepted form reads as the instant it names.
    #[test]
    fn reads_every_form() {
        let utc = parse("2026-11-21T10:00:00Z", Bound::Start).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-11-21T10:00:00.000000000Z");
        assert_eq!(
            parse("@1763719200", Bound::Start).unwrap().0.timestamp(),
            1_763_719_200
        );
        let expected = local(2026, 11, 21, 10, 0, 3);
        assert_eq!(
            parse("2026-11-21 10:00:03", Bound::Start).unwrap(),
            expected
        );
        assert_eq!(
            parse("2026-11-21T10:00:03", Bound::Start).unwrap(),
            expected
        );
        assert_eq!(
            parse("2026/11/21/10/00/03", Bound::Start).unwrap(),
            expected
        );
        assert_eq!(
            parse("2026-11-21 10:00", Bound::Start).unwrap(),
            local(2026, 11, 21, 10, 0, 0)
        );
        assert_eq!(
            parse("2026/11", Bound::Start).unwrap(),
            local(2026, 11, 1, 0, 0, 0)
        );
    }

    /// An end bound covers the whole span its precision names.
    #[test]
    fn end_bounds_cover_their_span() {
        let end = parse("2026-11-21", Bound::End).unwrap();
        let next_day = local(2026, 11, 22, 0, 0, 0);
        assert_eq!(end.0 + Duration::nanoseconds(1), next_day.0);
        let end = parse("2026/12", Bound::End).unwrap();
        assert_eq!(
            end.0 + Duration::nanoseconds(1),
            local(2027, 1, 1, 0, 0, 0).0
        );
        let end = parse("@10", Bound::End).unwrap();
        assert_eq!(end.0.timestamp_nanos_opt(), Some(10_999_999_999));
        let exact = parse("2026-11-21T10:00:00.5Z", Bound::End).unwrap();
        assert_eq!(exact.to_rfc3339(), "2026-11-21T10:00:00.500000000Z");
    }

    /// Malformed and impossible timestamps are refused with the forms that would work.
    #[test]
    fn refuses_bad_timestamps() {
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "21/11/2026x",
            "@abc",
            "2026-11",
            "",
        ] {
            assert!(parse(bad, Bound::Start).is_err(), "{bad:?} accepted");
        }
        let message = parse("soon", Bound::Start).unwrap_err().to_string();
        assert!(message.contains("2026-11-21T10:00:00Z"), "{message}");
    }
}
