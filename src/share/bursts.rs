//! Files written in bursts: a version that only ever existed here as an intermediate state
//! of a file being written (installed from a peer, then replaced from the peer moments
//! later, untouched in between) is not worth 30 days of trash each time. Of such versions,
//! the trash keeps the latest one per file; every other version still goes there.
//!
//! A pure record (each call takes `now`), kept in memory: after a restart the first
//! replacement of a file counts as an ordinary one, so at most one more version is kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::folder::Fingerprint;
use super::path::RelPath;

/// How soon after it arrived a version may be replaced and still count as an intermediate
/// state of a file being written: a version that stayed longer is one a person could have
/// opened, and is kept like any other.
pub const BURST_WINDOW: Duration = Duration::from_secs(30);

/// Entries past which the record forgets the ones older than [`BURST_WINDOW`] (they can no
/// longer make a replacement intermediate).
const TIDY_OVER: usize = 4096;

/// What the record knows of one file: the version this box installed last, and the
/// intermediate version of it that the trash keeps.
#[derive(Debug, Clone)]
struct Installed {
    /// The installed version, as `stat` saw it right after: any change here since (a
    /// write, a rename over it, a `touch`) gives another fingerprint.
    fingerprint: Fingerprint,
    /// When it was installed.
    at: Instant,
    /// Where the trash keeps the latest intermediate version of this file, if any.
    kept_partial: Option<PathBuf>,
}

/// The record of recent installations, for [`Bursts::replacing`] and [`Bursts::installed`].
#[derive(Debug, Default)]
pub struct Bursts {
    /// Per file, its latest installation.
    files: HashMap<RelPath, Installed>,
    /// The size at which the record next forgets what is too old to matter: twice what
    /// the last tidying kept, so that a box installing a million files in a few minutes
    /// (a first sync) tidies now and then, not at every file.
    tidy_at: usize,
}

/// What to do once a replacement of a file went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// The replaced version was an ordinary one: it stays in the trash.
    Ordinary,
    /// The replaced version was an intermediate state: it stays in the trash, and the one
    /// kept before it (if any) goes, having been superseded.
    Intermediate {
        /// The earlier intermediate version to remove from the trash.
        superseded: Option<PathBuf>,
    },
}

impl Bursts {
    /// An empty record.
    pub fn new() -> Bursts {
        Bursts::default()
    }

    /// Whether the version of `rel` now in place (`current`, its fingerprint before the
    /// replacement) is an intermediate state: this box installed it less than
    /// [`BURST_WINDOW`] before `now` and nothing changed it since.
    pub fn is_intermediate(&self, rel: &RelPath, current: &Fingerprint, now: Instant) -> bool {
        self.files.get(rel).is_some_and(|last| {
            last.fingerprint == *current && now.saturating_duration_since(last.at) < BURST_WINDOW
        })
    }

    /// Records that `rel` was replaced by a version with `fingerprint` at `now`, its old
    /// version kept in the trash at `trashed` (`None`: there was none, or it was not kept);
    /// `intermediate` is what [`Bursts::is_intermediate`] said before. Returns what the
    /// trash should drop.
    pub fn installed(
        &mut self,
        rel: &RelPath,
        fingerprint: Fingerprint,
        trashed: Option<PathBuf>,
        intermediate: bool,
        now: Instant,
    ) -> Replaced {
        let earlier = self.files.remove(rel).and_then(|last| last.kept_partial);
        let (replaced, kept_partial) = match (intermediate, trashed) {
            (true, Some(trashed)) => (
                Replaced::Intermediate {
                    superseded: earlier,
                },
                Some(trashed),
            ),
            // An ordinary version ends the burst: every version from here on is kept.
            (_, _) => (Replaced::Ordinary, None),
        };
        if self.files.len() >= self.tidy_at.max(TIDY_OVER) {
            self.files
                .retain(|_, last| now.saturating_duration_since(last.at) < BURST_WINDOW);
            self.tidy_at = 2 * self.files.len();
        }
        self.files.insert(
            rel.clone(),
            Installed {
                fingerprint,
                at: now,
                kept_partial,
            },
        );
        replaced
    }

    /// Forgets `rel` (it was deleted, moved or restored here): its next replacement is an
    /// ordinary one.
    pub fn forget(&mut self, rel: &RelPath) {
        self.files.remove(rel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(n: u64) -> Fingerprint {
        Fingerprint {
            size: n,
            mtime_ns: n as i64,
            ino: n,
            ctime_ns: n as i64,
        }
    }

    fn path(name: &str) -> RelPath {
        RelPath::parse(name).unwrap()
    }

    /// Ten versions arriving half a second apart leave one intermediate version in the
    /// trash (each earlier one is dropped as the next comes), besides the version that
    /// was there before the burst.
    #[test]
    fn a_burst_keeps_one_intermediate_version() {
        let mut bursts = Bursts::new();
        let start = Instant::now();
        let rel = path("log.bin");
        // The version before the burst: a person's, kept.
        let mut current = print(100);
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        for step in 1..=10u64 {
            let now = start + Duration::from_millis(500 * step);
            let intermediate = bursts.is_intermediate(&rel, &current, now);
            assert_eq!(intermediate, step > 1, "step {step}");
            let trashed = PathBuf::from(format!("trash/{step}"));
            match bursts.installed(&rel, print(step), Some(trashed.clone()), intermediate, now) {
                Replaced::Ordinary => kept.push(trashed),
                Replaced::Intermediate { superseded } => dropped.extend(superseded),
            }
            current = print(step);
        }
        // `trash/N` holds the version step N replaced: version N - 1. The one from before
        // the burst stays (trash/1), versions 1 to 8 went, version 9 (trash/10) stays.
        assert_eq!(kept, vec![PathBuf::from("trash/1")]);
        let expected: Vec<PathBuf> = (2..=9)
            .map(|n| PathBuf::from(format!("trash/{n}")))
            .collect();
        assert_eq!(dropped, expected);
    }

    /// A version that stayed longer than the window, or was changed here, is ordinary.
    #[test]
    fn a_version_that_stayed_or_was_touched_is_kept() {
        let mut bursts = Bursts::new();
        let start = Instant::now();
        let rel = path("doc.txt");
        bursts.installed(&rel, print(1), None, false, start);
        assert!(!bursts.is_intermediate(&rel, &print(1), start + BURST_WINDOW));
        assert!(bursts.is_intermediate(&rel, &print(1), start + Duration::from_secs(1)));
        // Written here after it arrived: another fingerprint.
        assert!(!bursts.is_intermediate(&rel, &print(2), start + Duration::from_secs(1)));
        // Another file knows nothing of it.
        assert!(!bursts.is_intermediate(&path("other"), &print(1), start));
    }

    /// An ordinary replacement in the middle of a burst keeps what the trash holds.
    #[test]
    fn an_ordinary_replacement_ends_the_burst() {
        let mut bursts = Bursts::new();
        let start = Instant::now();
        let rel = path("a");
        bursts.installed(&rel, print(1), None, false, start);
        let second = start + Duration::from_secs(1);
        assert!(bursts.is_intermediate(&rel, &print(1), second));
        let kept = Some(PathBuf::from("trash/1"));
        assert_eq!(
            bursts.installed(&rel, print(2), kept, true, second),
            Replaced::Intermediate { superseded: None }
        );
        // A person's edit made version 3; its replacement is ordinary, and the
        // intermediate version kept before is not dropped.
        let third = start + Duration::from_secs(2);
        assert!(!bursts.is_intermediate(&rel, &print(3), third));
        assert_eq!(
            bursts.installed(&rel, print(4), Some(PathBuf::from("trash/3")), false, third),
            Replaced::Ordinary
        );
        // Then an intermediate one again drops nothing (the burst started over).
        let fourth = start + Duration::from_secs(3);
        assert!(bursts.is_intermediate(&rel, &print(4), fourth));
        assert_eq!(
            bursts.installed(&rel, print(5), Some(PathBuf::from("trash/4")), true, fourth),
            Replaced::Intermediate { superseded: None }
        );
    }

    /// A first sync installs a million files within minutes: the record tidies now and
    /// then, not at every file (it did, and a 300,000-file first sync spent two thirds of
    /// its time there), and still forgets what is older than the window.
    #[test]
    fn many_installs_in_the_window_tidy_now_and_then() {
        let mut bursts = Bursts::new();
        let start = Instant::now();
        let mut tidied = 0;
        let mut before = 0;
        // 200,000 files, 10,000 a second: 20 s, all within one window.
        for n in 0..200_000u64 {
            let at = start + Duration::from_micros(n * 100);
            bursts.installed(&path(&format!("d/f{n}")), print(n), None, false, at);
            if bursts.files.len() < before {
                tidied += 1;
            }
            before = bursts.files.len();
        }
        assert_eq!(
            bursts.files.len(),
            200_000,
            "nothing is old enough to forget"
        );
        assert_eq!(tidied, 0);
        assert!(bursts.tidy_at >= 131_072, "tidy_at {}", bursts.tidy_at);
        // Later, past the window: the next tidying forgets them.
        let later = start + BURST_WINDOW + Duration::from_secs(30);
        for n in 0..(bursts.tidy_at as u64) {
            bursts.installed(&path(&format!("e/g{n}")), print(n), None, false, later);
        }
        assert!(
            bursts
                .files
                .keys()
                .all(|rel| rel.as_str().starts_with("e/"))
        );
    }
}
