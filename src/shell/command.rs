//! Shell command lines turned into validated commands. Everything that can be checked
//! locally is checked here, so that bad input gets a one-line error and nothing is sent.

use thiserror::Error;

use super::timestamp::{self, Bound, TimestampError};
use crate::share::filter::{FilterError, IndexFilter};
use crate::share::{PathError, RelPath};

/// Which transport a download asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// The box's TCP connection.
    Tcp,
    /// UDP datagrams.
    Udp,
}

/// What `sync` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    /// Show per-peer state.
    Status,
    /// Start a round now.
    Now,
    /// Resume auto-sync.
    On,
    /// Pause auto-sync.
    Off,
}

/// A validated shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `index ...`: list the peer's entries.
    Index(IndexFilter),
    /// `hash verify <file>`.
    HashVerify(RelPath),
    /// `hash checkall`.
    HashCheckall,
    /// `download tcp|udp <file> [--max-rate RATE]`.
    Download {
        /// The transport asked for.
        transport: TransportChoice,
        /// The file.
        name: RelPath,
        /// UDP only: a cap on the sending rate, bytes per second.
        max_rate: Option<u64>,
    },
    /// `history`: requests made and served.
    History,
    /// `peer [ADDR]`: show or switch the current peer.
    Peer(Option<String>),
    /// `sync status|now|on|off`.
    Sync(SyncAction),
    /// `help [command]`.
    Help(Option<String>),
    /// `quit` / `exit`.
    Quit,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Unbalanced quotes and the like.
    #[error("cannot split the line: {0}")]
    Quoting(String),
    /// The first word is no command.
    #[error("unknown command '{0}'{1}; type 'help' for the list")]
    Unknown(String, String),
    /// Wrong arguments for a known command.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// A bad timestamp.
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
    /// A bad pattern or range.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A bad file name.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A bad rate.
    #[error(
        "bad rate '{0}': use bits per second like 500k, 50M or 1G, or bytes per second like 50MB"
    )]
    Rate(String),
    /// A bad peer address.
    #[error("bad peer address '{0}': expected HOST:PORT, like 127.0.0.1:7878")]
    PeerAddress(String),
}

/// Every command word, with its usage line, for help and suggestions.
pub const COMMANDS: &[(&str, &str)] = &[
    ("index", USAGE_INDEX),
    ("hash", USAGE_HASH),
    ("download", USAGE_DOWNLOAD),
    ("history", "history"),
    ("peer", "peer [HOST:PORT]"),
    ("sync", "sync status|now|on|off"),
    ("help", "help [command]"),
    ("quit", "quit"),
];

const USAGE_INDEX: &str =
    "index longlist | index shortlist <start> <end> | index regex <pattern> | index glob <pattern>";
const USAGE_HASH: &str = "hash verify <file> | hash checkall";
const USAGE_DOWNLOAD: &str = "download tcp <file> | download udp <file> [--max-rate RATE]";

/// Parses one line; `Ok(None)` for a blank line or a `#` comment.
pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
    let words = shell_words::split(line).map_err(|e| CommandError::Quoting(e.to_string()))?;
    let Some((first, rest)) = words.split_first() else {
        return Ok(None);
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    let args: Vec<&str> = rest.iter().map(String::as_str).collect();
    let command = match canonical(first).as_str() {
        "index" => Command::Index(parse_index(&args)?),
        "hash" => parse_hash(&args)?,
        "download" => parse_download(&args)?,
        "history" if args.is_empty() => Command::History,
        "history" => return Err(CommandError::Usage("history")),
        "peer" => match args.as_slice() {
            [] => Command::Peer(None),
            [addr] => Command::Peer(Some(check_peer_address(addr)?)),
            _ => return Err(CommandError::Usage("peer [HOST:PORT]")),
        },
        "help" => match args.as_slice() {
            [] => Command::Help(None),
            [topic] => Command::Help(Some(canonical(topic))),
            _ => return Err(CommandError::Usage("help [command]")),
        },
        "sync" => Command::Sync(match args.as_slice() {
            [] => SyncAction::Status,
            [word] => match keyword(word).as_str() {
                "status" => SyncAction::Status,
                "now" => SyncAction::Now,
                "on" => SyncAction::On,
                "off" => SyncAction::Off,
                _ => return Err(CommandError::Usage("sync status|now|on|off")),
            },
            _ => return Err(CommandError::Usage("sync status|now|on|off")),
        }),
        "quit" => Command::Quit,
        _ => return Err(CommandError::Unknown(first.clone(), suggestion(first))),
    };
    Ok(Some(command))
}

/// The command a word names: keywords are case-insensitive and the assignment's names
/// (`IndexGet`, `FileHash`, `FileDownload`) are aliases.
pub fn canonical(word: &str) -> String {
    match word.to_ascii_lowercase().as_str() {
        "indexget" => "index".to_string(),
        "filehash" => "hash".to_string(),
        "filedownload" => "download".to_string(),
        "exit" => "quit".to_string(),
        other => other.to_string(),
    }
}

/// `" (did you mean 'index'?)"` for a near miss, or nothing.
fn suggestion(word: &str) -> String {
    let word = word.to_ascii_lowercase();
    COMMANDS
        .iter()
        .map(|(name, _)| (strsim::levenshtein(&word, name), *name))
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 3) && *distance < word.len())
        .min()
        .map(|(_, name)| format!(" (did you mean '{name}'?)"))
        .unwrap_or_default()
}

/// A subcommand keyword: case-insensitive, with the assignment's `--` prefix allowed.
fn keyword(word: &str) -> String {
    word.trim_start_matches("--").to_ascii_lowercase()
}

fn parse_index(args: &[&str]) -> Result<IndexFilter, CommandError> {
    let usage = CommandError::Usage(USAGE_INDEX);
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage);
    };
    let filter = match (keyword(sub).as_str(), rest) {
        ("longlist", []) => IndexFilter::Longlist,
        ("shortlist", [start, end]) => shortlist(start, end)?,
        // `shortlist 2026-11-21 10:00 2026-11-21 12:00`: dates and times typed unquoted.
        ("shortlist", [d1, t1, d2, t2]) => shortlist(&format!("{d1} {t1}"), &format!("{d2} {t2}"))?,
        ("regex", [pattern]) => IndexFilter::Regex {
            pattern: pattern.to_string(),
        },
        ("glob", [pattern]) => IndexFilter::Glob {
            pattern: pattern.to_string(),
        },
        _ => return Err(usage),
    };
    filter.compile()?;
    Ok(filter)
}

fn shortlist(start: &str, end: &str) -> Result<IndexFilter, CommandError> {
    Ok(IndexFilter::Shortlist {
        start: timestamp::parse(start, Bound::Start)?,
        end: timestamp::parse(end, Bound::End)?,
    })
}

fn parse_hash(args: &[&str]) -> Result<Command, CommandError> {
    match args {
        [sub, file] if keyword(sub) == "verify" => Ok(Command::HashVerify(RelPath::parse(file)?)),
        [sub] if keyword(sub) == "checkall" => Ok(Command::HashCheckall),
        _ => Err(CommandError::Usage(USAGE_HASH)),
    }
}

fn parse_download(args: &[&str]) -> Result<Command, CommandError> {
    let usage = || CommandError::Usage(USAGE_DOWNLOAD);
    let (transport, file, max_rate) = match args {
        [transport, file] => (transport, file, None),
        [transport, file, flag, rate] | [transport, flag, rate, file] if *flag == "--max-rate" => {
            (transport, file, Some(parse_rate(rate)?))
        }
        _ => return Err(usage()),
    };
    let transport = match keyword(transport).as_str() {
        "tcp" if max_rate.is_none() => TransportChoice::Tcp,
        "udp" => TransportChoice::Udp,
        _ => return Err(usage()),
    };
    Ok(Command::Download {
        transport,
        name: RelPath::parse(file)?,
        max_rate,
    })
}

/// Reads a rate: bits per second with an optional k/M/G suffix (`50M` is 50 Mbit/s), or
/// bytes per second when it ends in `B` (`50MB` is 50 megabytes/s). Returns bytes/second.
pub fn parse_rate(text: &str) -> Result<u64, CommandError> {
    let bad = || CommandError::Rate(text.to_string());
    let (number, bytes) = match text.strip_suffix('B') {
        Some(rest) => (rest, true),
        None => (text.strip_suffix("bit").unwrap_or(text), false),
    };
    let (digits, scale) = match number.char_indices().last() {
        Some((i, 'k' | 'K')) => (&number[..i], 1e3),
        Some((i, 'm' | 'M')) => (&number[..i], 1e6),
        Some((i, 'g' | 'G')) => (&number[..i], 1e9),
        _ => (number, 1.0),
    };
    let value: f64 = digits.parse().map_err(|_| bad())?;
    let bytes_per_second = value * scale / if bytes { 1.0 } else { 8.0 };
    if !bytes_per_second.is_finite() || bytes_per_second < 1.0 {
        return Err(bad());
    }
    Ok(bytes_per_second as u64)
}

/// Accepts `HOST:PORT` (and `[v6]:PORT`) with a valid port number.
pub fn check_peer_address(addr: &str) -> Result<String, CommandError> {
    let bad = || CommandError::PeerAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keywords ignore case, the assignment's spellings work, quoting keeps spaces.
    #[test]
    fn aliases_case_and_quoting() {
        assert_eq!(
            parse("IndexGet --longlist").unwrap(),
            Some(Command::Index(IndexFilter::Longlist))
        );
        assert_eq!(
            parse("FileHash --checkall").unwrap(),
            Some(Command::HashCheckall)
        );
        assert_eq!(
            parse(r#"FileDownload TCP "with space.txt""#).unwrap(),
            Some(Command::Download {
                transport: TransportChoice::Tcp,
                name: RelPath::parse("with space.txt").unwrap(),
                max_rate: None,
            })
        );
        assert_eq!(parse("   ").unwrap(), None);
        assert_eq!(parse("EXIT").unwrap(), Some(Command::Quit));
    }

    /// Unquoted date-and-time pairs are joined; start after end is refused locally.
    #[test]
    fn shortlist_forms() {
        assert!(parse("index shortlist 2026-11-21 10:00 2026-11-21 12:00").is_ok());
        assert!(parse("index shortlist 2026-11-21 2026-11-20").is_err());
        assert!(parse("index shortlist @0 @10").is_ok());
    }

    /// Rates read as bits per second unless they say bytes.
    #[test]
    fn rates() {
        assert_eq!(parse_rate("50M").unwrap(), 6_250_000);
        assert_eq!(parse_rate("50MB").unwrap(), 50_000_000);
        assert_eq!(parse_rate("800k").unwrap(), 100_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(matches!(
            parse("download udp big.iso --max-rate 50M").unwrap(),
            Some(Command::Download {
                transport: TransportChoice::Udp,
                max_rate: Some(6_250_000),
                ..
            })
        ));
        assert!(parse("download tcp big.iso --max-rate 50M").is_err());
    }

    /// Every malformed line gets a one-line error rather than a crash.
    #[test]
    fn errors_are_one_line() {
        for line in [
            "frobnicate",
            "index",
            "index regex (",
            "index shortlist yesterday today",
            "hash verify ../etc/passwd",
            "download ftp x",
            "download tcp /etc/passwd",
            "peer nowhere",
            "\"unbalanced",
        ] {
            let error = parse(line).unwrap_err().to_string();
            assert!(!error.contains('\n'), "{line}: {error}");
        }
        assert!(
            parse("indx longlist")
                .unwrap_err()
                .to_string()
                .contains("did you mean 'index'")
        );
    }
}
