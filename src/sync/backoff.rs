//! Backing off a file that does not fit: a download refused for lack of space is not tried
//! again every round (each try would log the same failure, and a try that fails only while
//! writing would fetch what fits first). It waits, longer after each failure (30 s, doubling,
//! at most an hour), unless the file changes on the peer or enough space is freed for it.
//! Pure: the caller gives the time and the free space.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::share::RelPath;

/// The wait after the first failure.
const FIRST_WAIT: Duration = Duration::from_secs(30);

/// The longest wait.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// One file waiting for space.
#[derive(Debug, Clone)]
struct Waiting {
    /// The version that did not fit (its BLAKE3): another version is tried at once.
    blake3: Option<String>,
    /// The bytes it needed.
    needed: u64,
    /// Failures in a row.
    failures: u32,
    /// Not tried again before then.
    until: Instant,
}

/// The files of one peer's rounds that did not fit, by name here.
#[derive(Debug, Default)]
pub struct RoomBackoff {
    waiting: HashMap<RelPath, Waiting>,
}

impl RoomBackoff {
    /// Whether the version `blake3` of `path` may be tried at `now` with `free` bytes free:
    /// yes unless it did not fit lately and is still waiting, with no more room than then.
    pub fn allows(&self, path: &RelPath, blake3: Option<&str>, free: u64, now: Instant) -> bool {
        match self.waiting.get(path) {
            None => true,
            Some(waiting) => {
                waiting.blake3.as_deref() != blake3
                    || free >= waiting.needed
                    || now >= waiting.until
            }
        }
    }

    /// The bytes `path` needed when it last did not fit, if it waits.
    pub fn needed(&self, path: &RelPath) -> Option<u64> {
        self.waiting.get(path).map(|waiting| waiting.needed)
    }

    /// Notes that the version `blake3` of `path` did not fit at `now`, needing `needed`
    /// bytes: it waits twice as long as after its previous failure (a new version starts
    /// again at the first wait).
    pub fn failed(&mut self, path: &RelPath, blake3: Option<&str>, needed: u64, now: Instant) {
        let failures = match self.waiting.get(path) {
            Some(waiting) if waiting.blake3.as_deref() == blake3 => waiting.failures + 1,
            _ => 1,
        };
        let wait = FIRST_WAIT
            .saturating_mul(1 << (failures - 1).min(16))
            .min(LONGEST_WAIT);
        self.waiting.insert(
            path.clone(),
            Waiting {
                blake3: blake3.map(str::to_string),
                needed,
                failures,
                until: now + wait,
            },
        );
    }

    /// Forgets `path` (it landed, or is no longer to be fetched).
    pub fn clear(&mut self, path: &RelPath) {
        self.waiting.remove(path);
    }

    /// Whether any file waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// A file that did not fit waits, longer after each failure, up to the longest wait;
    /// another version of it, or enough free space, lets it be tried at once.
    #[test]
    fn waits_grow_and_reset_when_the_file_or_the_space_changes() {
        let mut backoff = RoomBackoff::default();
        let (path, now) = (rel("big.bin"), Instant::now());
        assert!(backoff.allows(&path, Some("v1"), 0, now));
        backoff.failed(&path, Some("v1"), 100, now);
        assert!(!backoff.allows(&path, Some("v1"), 50, now + Duration::from_secs(29)));
        assert!(backoff.allows(&path, Some("v1"), 50, now + FIRST_WAIT));
        assert!(
            backoff.allows(&path, Some("v2"), 50, now),
            "another version"
        );
        assert!(backoff.allows(&path, Some("v1"), 100, now), "room now");
        backoff.failed(&path, Some("v1"), 100, now);
        assert!(!backoff.allows(&path, Some("v1"), 50, now + Duration::from_secs(59)));
        assert!(backoff.allows(&path, Some("v1"), 50, now + 2 * FIRST_WAIT));
        for _ in 0..20 {
            backoff.failed(&path, Some("v1"), 100, now);
        }
        assert!(backoff.allows(&path, Some("v1"), 50, now + LONGEST_WAIT));
        backoff.clear(&path);
        assert!(backoff.is_empty());
    }
}
