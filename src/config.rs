//! A box's settings kept in a file, `.boxsync/config.toml`, so that `boxsync serve -d DIR`
//! with no flags resumes the box as it last ran: its listen address, peers and their
//! trust, sync period, rate cap, trash retention, discovery and TCP congestion control.
//!
//! The file holds the texts a person would type as flags (`peers = ["ID@host:7001"]` is
//! what `-p ID@host:7001` takes), each checked when the file is read, so that a start
//! never goes ahead with half of a file. A flag given on the command line wins over the
//! file ([`BoxConfig::merged_with`]); the result is written back
//! ([`BoxConfig::write_if_changed`]) atomically, owner-only, and only when it differs.
//! Turning the result into a running box's options, with the built-in defaults, is the
//! command line's job (`src/cli.rs`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::parse::parse_rate;
use crate::sync::PeerSpec;
use crate::types::BoxId;

/// The settings file's name inside the state folder (`.boxsync/`).
pub const CONFIG_FILE: &str = "config.toml";

/// The first line of a written file: a person who opens it learns what it is and that
/// flags win over it.
pub const HEADER: &str = "# boxsync: this box's settings, written at each start; flags given on the command line override them.\n";

/// Why a settings file cannot be used. Every message is one line that names the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file exists but cannot be read (a missing state file is no error).
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        cause: std::io::Error,
    },
    /// Not TOML, or not the keys this file takes (a typo in a key is caught here).
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line (from 1) where the problem is.
        line: usize,
        /// What is wrong there, on one line.
        message: String,
    },
    /// A key's value is not what the matching flag takes.
    #[error("{}: {key}: {message}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The key whose value is refused.
        key: &'static str,
        /// Why, as the flag's own check says it.
        message: String,
    },
    /// The settings cannot be written back.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        cause: std::io::Error,
    },
}

/// The settings as the file (and, the same way, the command line) gives them: each
/// `None` or empty list means "not said here", so that merging can tell a value given
/// from a default. The texts are the flags' own forms, kept as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxConfig {
    /// The shared folder; only in a file given with `--config`, used when `-d` is not
    /// (a box's own file lives inside its folder, so naming it there says nothing).
    /// Relative to the file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    /// The server address, `HOST:PORT` or `none` (as `-l`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The peers, each as `-p` takes it (`ID@HOST:PORT`, `ID`, optionally `tcp://` or
    /// `udp://` first); the first is the shell's current peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Box IDs trusted while this box runs (as `--trust`); trust for good stays in
    /// `trusted.json`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<String>,
    /// The auto-sync period in seconds; 0 turns it off (as `--sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<u64>,
    /// The period of the full rescan in seconds while the watcher runs (as `--rescan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan: Option<u64>,
    /// The UDP rate cap, as `--max-rate` takes it (`50M`, `10MB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
    /// How many days sync keeps replaced and deleted versions (as `--trash-days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trash_days: Option<u64>,
    /// Whether local discovery runs (`false` is `--no-discovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<bool>,
    /// TCP congestion control (as `--tcp-congestion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_congestion: Option<String>,
}

impl BoxConfig {
    /// The state folder's settings file: `<state>/config.toml`.
    pub fn path_in(state: &Path) -> PathBuf {
        state.join(CONFIG_FILE)
    }

    /// Reads the settings file at `path`; a file that is not there reads as empty when
    /// `missing_ok` (a box's own file, before its first start), else is an error (a file
    /// named with `--config`).
    pub fn read(path: &Path, missing_ok: bool) -> Result<BoxConfig, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => BoxConfig::parse(path, &text),
            // No folder there (or a file where it should be): no box yet, so no settings;
            // opening the folder says what is wrong with it.
            Err(e)
                if missing_ok
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
            {
                Ok(BoxConfig::default())
            }
            Err(cause) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                cause,
            }),
        }
    }

    /// Reads settings from `text` (the contents of `path`, which errors name) and checks
    /// every value the way its flag would be checked.
    pub fn parse(path: &Path, text: &str) -> Result<BoxConfig, ConfigError> {
        let config: BoxConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |span| {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                before.iter().filter(|b| **b == b'\n').count() + 1
            });
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                message: e.message().lines().collect::<Vec<_>>().join(" "),
            }
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// Refuses a value its flag would refuse, naming the key.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            message,
        };
        if let Some(listen) = &self.listen
            && listen != "none"
            && !listen
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(bad(
                "listen",
                format!("bad listen address '{listen}': expected HOST:PORT or none"),
            ));
        }
        for peer in &self.peers {
            PeerSpec::parse(peer).map_err(|e| bad("peers", e.to_string()))?;
        }
        for id in &self.trust {
            BoxId::parse(id).map_err(|e| bad("trust", e.to_string()))?;
        }
        if let Some(rate) = &self.max_rate {
            parse_rate(rate).map_err(|e| bad("max_rate", e.to_string()))?;
        }
        Ok(())
    }

    /// These settings (the file's) with `flags` (the command line's) over them: a value
    /// given as a flag wins; the flags' peers come first (the first `-p` stays the shell's
    /// current peer), then the file's that no flag names (one entry per ID: a flag's
    /// address and transport win); trust lists are joined, each ID once.
    ///
    /// Both sides must have been checked ([`BoxConfig::parse`] for a file).
    pub fn merged_with(&self, flags: &BoxConfig) -> BoxConfig {
        let peer_id = |text: &String| PeerSpec::parse(text).ok().map(|spec| spec.id);
        let mut peers: Vec<String> = Vec::new();
        let mut seen: Vec<Option<BoxId>> = Vec::new();
        for peer in flags.peers.iter().chain(&self.peers) {
            let id = peer_id(peer);
            if id.is_some() && seen.contains(&id) {
                continue;
            }
            seen.push(id);
            peers.push(peer.clone());
        }
        let mut trust: Vec<String> = Vec::new();
        let mut trusted: Vec<Option<BoxId>> = Vec::new();
        for id in self.trust.iter().chain(&flags.trust) {
            let parsed = BoxId::parse(id).ok();
            if parsed.is_some() && trusted.contains(&parsed) {
                continue;
            }
            trusted.push(parsed);
            trust.push(id.clone());
        }
        BoxConfig {
            folder: flags.folder.clone().or_else(|| self.folder.clone()),
            listen: flags.listen.clone().or_else(|| self.listen.clone()),
            peers,
            trust,
            sync: flags.sync.or(self.sync),
            rescan: flags.rescan.or(self.rescan),
            max_rate: flags.max_rate.clone().or_else(|| self.max_rate.clone()),
            trash_days: flags.trash_days.or(self.trash_days),
            discovery: flags.discovery.or(self.discovery),
            tcp_congestion: flags
                .tcp_congestion
                .clone()
                .or_else(|| self.tcp_congestion.clone()),
        }
    }

    /// The file's text: the header line, then the keys.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("{HEADER}{body}")
    }

    /// Writes these settings to `path` unless the file there already says the same (its
    /// comments and layout are then left alone). The write is atomic: a temporary file in
    /// the same folder, owner-only (0600), flushed to disk, renamed over the old one, and
    /// the folder flushed, so that a crash leaves the old file or the new, never half of
    /// one. Returns whether it wrote.
    ///
    /// A file that does not parse is not replaced: reading it (which a start does first)
    /// refuses the start.
    pub fn write_if_changed(&self, path: &Path) -> Result<bool, ConfigError> {
        let write_error = |cause| ConfigError::Write {
            path: path.to_path_buf(),
            cause,
        };
        match fs::read_to_string(path) {
            Ok(text) => match BoxConfig::parse(path, &text) {
                Ok(on_disk) if on_disk == *self => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(cause) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    cause,
                });
            }
        }
        let folder = path.parent().unwrap_or(Path::new("."));
        let tmp = folder.join(format!(".{CONFIG_FILE}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(folder)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_error(e));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A valid box ID (any key's hash will do).
    fn an_id() -> String {
        let dir = tempfile::tempdir().unwrap();
        crate::identity::Identity::load_or_create(dir.path())
            .unwrap()
            .id()
            .to_string()
    }

    fn parse(text: &str) -> Result<BoxConfig, ConfigError> {
        BoxConfig::parse(Path::new("/box/.boxsync/config.toml"), text)
    }

    /// Every key reads as its flag would take it.
    #[test]
    fn reads_every_key() {
        let id = an_id();
        let text = format!(
            "listen = \"0.0.0.0:7002\"\npeers = [\"{id}@192.0.2.7:7001\", \"udp://{id}\"]\n\
             trust = [\"{id}\"]\nsync = 7\nmax_rate = \"50M\"\ntrash_days = 3\n\
             discovery = false\ntcp_congestion = \"cubic\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.listen.as_deref(), Some("0.0.0.0:7002"));
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.sync, Some(7));
        assert_eq!(config.max_rate.as_deref(), Some("50M"));
        assert_eq!(config.trash_days, Some(3));
        assert_eq!(config.discovery, Some(false));
        assert_eq!(parse("").unwrap(), BoxConfig::default());
    }

    /// A mistyped key, a bad value or broken TOML is one line naming the file and the
    /// line (or the key).
    #[test]
    fn refusals_name_the_file_and_line() {
        let e = parse("sync = 7\nlisten_addr = \"x:1\"\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("/box/.boxsync/config.toml:2: unknown field `listen_addr`"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        let e = parse("sync = \"often\"\n").unwrap_err().to_string();
        assert!(e.contains("config.toml:1:"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = parse("peers = [\"127.0.0.1:7001\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("peers: "), "{e}");
        let e = parse("max_rate = \"fast\"").unwrap_err().to_string();
        assert!(e.contains("max_rate: bad rate 'fast'"), "{e}");
        let e = parse("listen = \"nowhere\"").unwrap_err().to_string();
        assert!(e.contains("listen: "), "{e}");
        assert!(parse("listen = \"none\"").is_ok());
    }

    /// A flag wins over the file; lists join, one entry per ID, a flag's address winning.
    #[test]
    fn flags_win_over_the_file() {
        let (a, b) = (an_id(), an_id());
        let file = BoxConfig {
            listen: Some("0.0.0.0:7002".into()),
            peers: vec![format!("{a}@192.0.2.7:7001"), format!("{b}@192.0.2.8:7001")],
            trust: vec![a.clone()],
            sync: Some(7),
            trash_days: Some(3),
            ..BoxConfig::default()
        };
        let flags = BoxConfig {
            peers: vec![format!("udp://{b}@192.0.2.9:7009")],
            trust: vec![a.clone(), b.clone()],
            sync: Some(0),
            ..BoxConfig::default()
        };
        let merged = file.merged_with(&flags);
        assert_eq!(merged.listen.as_deref(), Some("0.0.0.0:7002"));
        assert_eq!(merged.sync, Some(0));
        assert_eq!(merged.trash_days, Some(3));
        assert_eq!(
            merged.peers,
            vec![
                format!("udp://{b}@192.0.2.9:7009"),
                format!("{a}@192.0.2.7:7001")
            ]
        );
        assert_eq!(merged.trust, vec![a, b]);
        assert_eq!(file.merged_with(&BoxConfig::default()), file);
    }

    /// The written file reads back the same, starts with the header, is the owner's only,
    /// is replaced whole (no temporary file left) and only when the settings changed.
    #[test]
    fn writes_atomically_and_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = BoxConfig::path_in(dir.path());
        let config = BoxConfig {
            listen: Some("127.0.0.1:0".into()),
            sync: Some(7),
            ..BoxConfig::default()
        };
        assert!(config.write_if_changed(&path).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert_eq!(BoxConfig::read(&path, false).unwrap(), config);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        // The same settings, laid out by hand: left alone.
        fs::write(&path, "# mine\nsync = 7\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert!(!config.write_if_changed(&path).unwrap());
        assert!(fs::read_to_string(&path).unwrap().starts_with("# mine"));

        // A file that does not parse is never replaced.
        fs::write(&path, "sync = 7\nbogus = 1\n").unwrap();
        assert!(config.write_if_changed(&path).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "sync = 7\nbogus = 1\n");

        // Missing: empty for a box's own file, an error for a named one.
        let missing = dir.path().join("nope.toml");
        assert_eq!(
            BoxConfig::read(&missing, true).unwrap(),
            BoxConfig::default()
        );
        assert!(BoxConfig::read(&missing, false).is_err());
    }
}
