//! Shell command lines turned into validated commands. Everything that can be checked
//! locally is checked here, so that bad input gets a one-line error and nothing is sent.

use thiserror::Error;

use super::remote;
use super::timestamp::{self, Bound, TimestampError};
use crate::parse::{BadPeerAddress, BadRate, format_rate, parse_rate};
use crate::share::filter::{FilterError, IndexFilter};
use crate::share::{PathError, RelPath};
use crate::types::{PeerAddress, Transport};

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
    /// Carry out, in one round, the deletions the mass-delete guard stopped.
    AllowDeletes,
}

/// What `trash` is asked to do: this box's own trash, no peer needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrashAction {
    /// `trash`: how much the trash holds.
    Usage,
    /// `trash list [PATH]`: the versions kept, of a file or of everything in a folder.
    List(Option<RelPath>),
    /// `trash restore PATH [--version N]`: puts a version back (1, the newest, by default).
    Restore {
        /// The file.
        path: RelPath,
        /// Which version (1: the newest).
        version: usize,
    },
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
        transport: Transport,
        /// The file.
        name: RelPath,
        /// UDP only: a cap on the sending rate, bytes per second.
        max_rate: Option<u64>,
    },
    /// `download tcp|udp PATTERN|FOLDER/` or `get ...`: every file a glob picks, or every
    /// file under a folder, a few at a time.
    DownloadMany {
        /// The transport asked for.
        transport: Transport,
        /// Which files.
        selection: Selection,
        /// UDP only: a cap on the sending rate of each file, bytes per second.
        max_rate: Option<u64>,
    },
    /// `ls [-l] [PATH|PATTERN]`: the entries directly inside the current remote folder (or
    /// the one named), or those a pattern picks.
    Ls {
        /// `-l`: with mode, size and modification time.
        long: bool,
        /// What to list (`None`: the current remote folder).
        target: Option<Selection>,
    },
    /// `cd [FOLDER]`: changes the current remote folder (`None`: back to the root).
    Cd(Option<String>),
    /// `pwd`: shows the current remote folder.
    Pwd,
    /// `history [N] [WORD]`: requests made and served.
    History(HistoryQuery),
    /// `peer [ID@HOST:PORT]`: show or switch the current peer.
    Peer(Option<PeerAddress>),
    /// `peers`: the session's peers and the boxes this box trusts.
    Peers,
    /// `sync status|now|on|off`.
    Sync(SyncAction),
    /// `trash`, `trash list [PATH]`, `trash restore PATH [--version N]`.
    Trash(TrashAction),
    /// `help [command]`.
    Help(Option<String>),
    /// `quit` / `exit`.
    Quit,
    /// `jobs`: the background transfers in flight.
    Jobs,
    /// `kill <job>`: cancels a background transfer.
    Kill(u32),
    /// `wait`: waits for every background transfer, showing their progress.
    Wait,
    /// `download ... &` or `bg download ...`: a download run as a background job, so that
    /// the prompt stays usable. Only downloads run in the background.
    Background(Box<Command>),
    /// A command whose name was typed from the top of the peer's folder (`get /notes/a`,
    /// `ls /`, as in sftp): it runs as if no `cd` had been made. The name inside is
    /// relative to the top.
    Rooted(Box<Command>),
}

impl Command {
    /// Whether the command writes into this box's shared folder (a download, in the
    /// foreground or not, or a restore from the trash): a script that runs one needs the
    /// folder, others can run without.
    pub fn writes_locally(&self) -> bool {
        match self {
            Command::Download { .. } | Command::DownloadMany { .. } | Command::Trash(_) => true,
            Command::Background(inner) | Command::Rooted(inner) => inner.writes_locally(),
            _ => false,
        }
    }

    /// The command itself, whether or not its name was typed from the top.
    pub fn unrooted(&self) -> &Command {
        match self {
            Command::Rooted(inner) => inner,
            other => other,
        }
    }

    /// The command, and whether its name was typed from the top of the peer's folder
    /// (never [`Command::Rooted`] itself).
    pub fn split_rooted(self) -> (Command, bool) {
        let mut command = self;
        let mut rooted = false;
        while let Command::Rooted(inner) = command {
            (command, rooted) = (*inner, true);
        }
        (command, rooted)
    }
}

/// Several remote files named at once, relative to the current remote folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The files whose path matches a glob (`*.txt`, `music/**/*.mp3`).
    Glob(String),
    /// A folder (`ls`: or a file) named by its path.
    Path(RelPath),
}

impl Selection {
    /// `word` as typed: a pattern when it holds a glob character and is a valid one, else
    /// a name (`a[1` is a file's name: no glob).
    fn parse(word: &str) -> Result<Selection, CommandError> {
        if is_glob(word) {
            Ok(Selection::Glob(word.to_string()))
        } else {
            Ok(Selection::Path(RelPath::parse(word)?))
        }
    }

    /// As typed again (`'*.txt'`, `music/`).
    pub fn line_word(&self) -> String {
        match self {
            Selection::Glob(pattern) => shell_words::quote(pattern).into_owned(),
            Selection::Path(path) => format!("{}/", shell_words::quote(path.as_str())),
        }
    }
}

/// Which requests `history` shows: the last `count` of those that mention `word`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// At most this many, the newest (`None`: all).
    pub count: Option<usize>,
    /// Only records whose request, peer, direction or result holds this, ignoring case.
    pub word: Option<String>,
}

impl HistoryQuery {
    /// The records `records` (oldest first) that the query asks for, oldest first.
    pub fn select<T>(&self, records: Vec<T>, text: impl Fn(&T) -> String) -> Vec<T> {
        let word = self.word.as_ref().map(|w| w.to_lowercase());
        let mut chosen: Vec<T> = records
            .into_iter()
            .filter(|r| {
                word.as_ref()
                    .is_none_or(|w| text(r).to_lowercase().contains(w))
            })
            .collect();
        if let Some(count) = self.count {
            let skip = chosen.len().saturating_sub(count);
            chosen.drain(..skip);
        }
        chosen
    }
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
    #[error(transparent)]
    Rate(#[from] BadRate),
    /// A bad peer address.
    #[error(transparent)]
    PeerAddress(#[from] BadPeerAddress),
    /// A bad `ID@HOST:PORT`.
    #[error(transparent)]
    Peer(#[from] crate::types::BadPeerAddress),
    /// A bad remote folder or pattern.
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    /// `&` or `bg` on a command that is not a download.
    #[error("only downloads run in the background ('{0}' cannot)")]
    NotBackground(String),
}

/// Every command word, with its usage line, for help and suggestions.
pub const COMMANDS: &[(&str, &str)] = &[
    ("index", USAGE_INDEX),
    ("hash", USAGE_HASH),
    ("download", USAGE_DOWNLOAD),
    ("get", USAGE_GET),
    ("ls", USAGE_LS),
    ("cd", USAGE_CD),
    ("pwd", "pwd"),
    ("history", USAGE_HISTORY),
    ("peer", "peer [ID@HOST:PORT]"),
    ("peers", "peers"),
    ("sync", "sync status|now|on|off|allow-deletes"),
    ("jobs", "jobs"),
    ("kill", USAGE_KILL),
    ("wait", "wait"),
    ("bg", USAGE_BG),
    ("trash", USAGE_TRASH),
    ("help", "help [command]"),
    ("quit", "quit"),
];

/// The assignment's names and other spellings that [`canonical`] maps to a command word;
/// completion offers them when the typed prefix matches.
pub const ALIASES: &[&str] = &["IndexGet", "FileHash", "FileDownload", "exit"];

/// The words that may follow a command word (`index l<TAB>` completes `longlist`).
pub fn subcommands(command: &str) -> &'static [&'static str] {
    match command {
        "index" => &["longlist", "shortlist", "regex", "glob"],
        "hash" => &["verify", "checkall"],
        "download" => &["tcp", "udp"],
        "sync" => &["status", "now", "on", "off", "allow-deletes"],
        "trash" => &["list", "restore"],
        _ => &[],
    }
}

const USAGE_INDEX: &str =
    "index longlist | index shortlist <start> <end> | index regex <pattern> | index glob <pattern>";
const USAGE_HASH: &str = "hash verify <file> | hash checkall";
const USAGE_DOWNLOAD: &str =
    "download tcp <file|pattern|folder/> | download udp <file|pattern|folder/> [--max-rate RATE]";
const USAGE_GET: &str = "get <file|pattern|folder>";
const USAGE_LS: &str = "ls [-l] [path|pattern]";
const USAGE_CD: &str = "cd [folder] (.. goes up, / or nothing to the root)";
const USAGE_HISTORY: &str = "history [N] [WORD] (the last N requests; only those mentioning WORD)";
const USAGE_TRASH: &str = "trash | trash list [PATH] | trash restore PATH [--version N]";
const USAGE_KILL: &str = "kill <job> (the number 'jobs' shows)";
const USAGE_BG: &str = "bg download tcp|udp <file> | bg get <file> (or: download ... &)";

/// Parses one line; `Ok(None)` for a blank line or a `#` comment.
///
/// A trailing `&` (or a leading `bg`) asks for the command to run in the background.
pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
    let (line, ampersand) = split_ampersand(line);
    let words = shell_words::split(line).map_err(|e| CommandError::Quoting(e.to_string()))?;
    let Some((first, rest)) = words.split_first() else {
        return if ampersand {
            Err(CommandError::Usage(USAGE_BG))
        } else {
            Ok(None)
        };
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    let (background, first, rest) = match canonical(first).as_str() {
        "bg" => match rest.split_first() {
            Some((first, rest)) => (true, first, rest),
            None => return Err(CommandError::Usage(USAGE_BG)),
        },
        _ => (ampersand, first, rest),
    };
    let command = parse_words(first, rest)?;
    if !background {
        return Ok(Some(command));
    }
    match command.unrooted() {
        Command::Download { .. } | Command::DownloadMany { .. } => {
            Ok(Some(Command::Background(Box::new(command))))
        }
        _ => Err(CommandError::NotBackground(canonical(first))),
    }
}

/// Splits off an unquoted, unescaped trailing `&`: `download tcp a.iso &` runs in the
/// background. A quoted name keeps its `&` (`"a &"` ends with a quote).
fn split_ampersand(line: &str) -> (&str, bool) {
    let trimmed = line.trim_end();
    match trimmed.strip_suffix('&') {
        Some(rest) if !rest.ends_with('\\') => (rest, true),
        _ => (line, false),
    }
}

/// Parses a command word and its arguments. A remote name typed with a leading `/`
/// (`hash`, `download`, `get`, `ls`) is from the top of the peer's folder, whatever `cd`
/// said: the command comes back [`Command::Rooted`].
fn parse_words(first: &str, rest: &[String]) -> Result<Command, CommandError> {
    let word = canonical(first);
    let names_remote = matches!(word.as_str(), "hash" | "download" | "get" | "ls");
    let mut rooted = false;
    let mut args: Vec<&str> = Vec::with_capacity(rest.len());
    for arg in rest.iter().map(String::as_str) {
        match arg.strip_prefix('/') {
            Some(from_top) if names_remote => {
                rooted = true;
                let from_top = from_top.trim_start_matches('/');
                // `ls /`: the top itself.
                if !(from_top.is_empty() && word == "ls") {
                    args.push(from_top);
                }
            }
            _ => args.push(arg),
        }
    }
    let command = parse_args(&word, first, &args)?;
    Ok(match rooted {
        true => Command::Rooted(Box::new(command)),
        false => command,
    })
}

/// Parses a command word (`word`, canonical; `first` as typed) and its arguments.
fn parse_args(word: &str, first: &str, args: &[&str]) -> Result<Command, CommandError> {
    let args = args.to_vec();
    let command = match word {
        "index" => Command::Index(parse_index(&args)?),
        "hash" => parse_hash(&args)?,
        "download" => parse_download(&args)?,
        "get" => match args.as_slice() {
            [name] => download_command(Transport::Tcp, name, None)?,
            _ => return Err(CommandError::Usage(USAGE_GET)),
        },
        "ls" => parse_ls(&args)?,
        "cd" => match args.as_slice() {
            [] => Command::Cd(None),
            [folder] => Command::Cd(Some(folder.to_string())),
            _ => return Err(CommandError::Usage(USAGE_CD)),
        },
        "pwd" if args.is_empty() => Command::Pwd,
        "pwd" => return Err(CommandError::Usage("pwd")),
        "history" => Command::History(parse_history(&args)?),
        "peer" => match args.as_slice() {
            [] => Command::Peer(None),
            [target] => Command::Peer(Some(PeerAddress::parse(target)?)),
            _ => return Err(CommandError::Usage("peer [ID@HOST:PORT]")),
        },
        "trash" => Command::Trash(parse_trash(&args)?),
        "peers" if args.is_empty() => Command::Peers,
        "peers" => return Err(CommandError::Usage("peers")),
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
                "allow-deletes" => SyncAction::AllowDeletes,
                _ => return Err(CommandError::Usage("sync status|now|on|off|allow-deletes")),
            },
            _ => return Err(CommandError::Usage("sync status|now|on|off|allow-deletes")),
        }),
        "jobs" if args.is_empty() => Command::Jobs,
        "jobs" => return Err(CommandError::Usage("jobs")),
        "kill" => match args.as_slice() {
            [job] => Command::Kill(parse_job_id(job).ok_or(CommandError::Usage(USAGE_KILL))?),
            _ => return Err(CommandError::Usage(USAGE_KILL)),
        },
        "wait" if args.is_empty() => Command::Wait,
        "wait" => return Err(CommandError::Usage("wait")),
        "quit" => Command::Quit,
        _ => return Err(CommandError::Unknown(first.to_string(), suggestion(first))),
    };
    Ok(command)
}

/// `history [N] [WORD]`, in either order: a number is the count, anything else the word.
fn parse_trash(args: &[&str]) -> Result<TrashAction, CommandError> {
    let usage = CommandError::Usage(USAGE_TRASH);
    let Some((word, rest)) = args.split_first() else {
        return Ok(TrashAction::Usage);
    };
    match (keyword(word).as_str(), rest) {
        ("list", []) => Ok(TrashAction::List(None)),
        ("list", [path]) => Ok(TrashAction::List(Some(RelPath::parse(path)?))),
        ("restore", [path]) => Ok(TrashAction::Restore {
            path: RelPath::parse(path)?,
            version: 1,
        }),
        ("restore", [path, flag, n]) | ("restore", [flag, n, path]) if *flag == "--version" => {
            match n.parse::<usize>() {
                Ok(version) if version >= 1 => Ok(TrashAction::Restore {
                    path: RelPath::parse(path)?,
                    version,
                }),
                _ => Err(usage),
            }
        }
        _ => Err(usage),
    }
}

fn parse_history(args: &[&str]) -> Result<HistoryQuery, CommandError> {
    let usage = CommandError::Usage(USAGE_HISTORY);
    let mut query = HistoryQuery::default();
    for arg in args {
        match arg.parse::<usize>() {
            Ok(0) => return Err(usage),
            Ok(count) if query.count.is_none() => query.count = Some(count),
            Err(_) if query.word.is_none() && !arg.is_empty() => query.word = Some(arg.to_string()),
            _ => return Err(usage),
        }
    }
    Ok(query)
}

/// A job number as `jobs` shows it: `2`, or `%2` as in other shells.
fn parse_job_id(word: &str) -> Option<u32> {
    word.strip_prefix('%')
        .unwrap_or(word)
        .parse()
        .ok()
        .filter(|id| *id > 0)
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
        "tcp" if max_rate.is_none() => Transport::Tcp,
        "udp" => Transport::Udp,
        _ => return Err(usage()),
    };
    download_command(transport, file, max_rate)
}

/// A download of `word`: several files when it is a pattern or ends with `/`, else one
/// (which the session still takes as a folder when the peer has a folder by that name).
fn download_command(
    transport: Transport,
    word: &str,
    max_rate: Option<u64>,
) -> Result<Command, CommandError> {
    if is_glob(word) || word.ends_with('/') {
        return Ok(Command::DownloadMany {
            transport,
            selection: Selection::parse(word)?,
            max_rate,
        });
    }
    Ok(Command::Download {
        transport,
        name: RelPath::parse(word)?,
        max_rate,
    })
}

/// Whether `word` is to be read as a pattern: it holds a glob character and is a valid,
/// relative glob. Anything else is a name, checked as names are.
fn is_glob(word: &str) -> bool {
    remote::is_pattern(word) && remote::check_pattern(word).is_ok()
}

/// `ls`, `ls -l`, `ls PATH`, `ls -l PATTERN` (the flag before or after).
fn parse_ls(args: &[&str]) -> Result<Command, CommandError> {
    let mut long = false;
    let mut target = None;
    for arg in args {
        match *arg {
            "-l" => long = true,
            _ if arg.starts_with('-') => return Err(CommandError::Usage(USAGE_LS)),
            _ if target.is_none() => target = Some(Selection::parse(arg)?),
            _ => return Err(CommandError::Usage(USAGE_LS)),
        }
    }
    Ok(Command::Ls { long, target })
}

/// A several-file download as a line a person could type again; names background jobs.
pub fn download_many_line(
    transport: Transport,
    selection: &Selection,
    max_rate: Option<u64>,
) -> String {
    let mut line = format!("download {} {}", transport.name(), selection.line_word());
    if let Some(rate) = max_rate {
        line.push_str(&format!(" --max-rate {}", format_rate(rate)));
    }
    line
}

/// A download as a line a person could type again (`download udp big.iso --max-rate 8M`);
/// names background jobs.
pub fn download_line(transport: Transport, name: &RelPath, max_rate: Option<u64>) -> String {
    let transport = transport.name();
    let mut line = format!("download {transport} {}", shell_words::quote(name.as_str()));
    if let Some(rate) = max_rate {
        line.push_str(&format!(" --max-rate {}", format_rate(rate)));
    }
    line
}

/// A rate in bytes per second written back as `--max-rate` reads it (`8M`, `1.5G`).
#[cfg(test)]
mod tests {
    use super::*;

    /// A leading `/` names from the top of the peer's folder (sftp's way): the command
    /// comes back rooted, with the name relative to the top; `ls /` is the top itself.
    #[test]
    fn a_leading_slash_is_from_the_top() {
        let rooted = |c: Command| Some(Command::Rooted(Box::new(c)));
        assert_eq!(
            parse("get /notes/a.txt").unwrap(),
            rooted(Command::Download {
                transport: Transport::Tcp,
                name: RelPath::parse("notes/a.txt").unwrap(),
                max_rate: None,
            })
        );
        assert_eq!(
            parse("hash verify //a.txt").unwrap(),
            rooted(Command::HashVerify(RelPath::parse("a.txt").unwrap()))
        );
        assert_eq!(
            parse("ls /").unwrap(),
            rooted(Command::Ls {
                long: false,
                target: None
            })
        );
        // In the background, the job is the rooted download.
        assert!(matches!(
            parse("get /a.txt &").unwrap(),
            Some(Command::Background(inner)) if matches!(*inner, Command::Rooted(_))
        ));
        // A name without one, and other commands, are as before.
        assert!(matches!(
            parse("get a.txt").unwrap(),
            Some(Command::Download { .. })
        ));
        assert_eq!(parse("cd /").unwrap(), Some(Command::Cd(Some("/".into()))));
    }

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
                transport: Transport::Tcp,
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
                transport: Transport::Udp,
                max_rate: Some(6_250_000),
                ..
            })
        ));
        assert!(parse("download tcp big.iso --max-rate 50M").is_err());
    }

    /// A trailing `&` or a leading `bg` backgrounds a download, and nothing else; a quoted
    /// `&` stays in the name; jobs are named by number or `%number`.
    #[test]
    fn background_and_jobs() {
        let download = |name: &str| Command::Download {
            transport: Transport::Tcp,
            name: RelPath::parse(name).unwrap(),
            max_rate: None,
        };
        let background = |name: &str| Some(Command::Background(Box::new(download(name))));
        assert_eq!(parse("download tcp a.iso &").unwrap(), background("a.iso"));
        assert_eq!(parse("download tcp a.iso&").unwrap(), background("a.iso"));
        assert_eq!(parse("bg download tcp a.iso").unwrap(), background("a.iso"));
        assert_eq!(
            parse("BG download tcp a.iso &").unwrap(),
            background("a.iso")
        );
        assert_eq!(
            parse("download tcp \"a &\"").unwrap(),
            Some(download("a &"))
        );
        assert_eq!(parse(r"download tcp a\&").unwrap(), Some(download("a&")));
        assert!(matches!(
            parse("index longlist &"),
            Err(CommandError::NotBackground(word)) if word == "index"
        ));
        assert!(parse("bg").is_err());
        assert!(parse("&").is_err());
        assert_eq!(parse("jobs").unwrap(), Some(Command::Jobs));
        assert_eq!(parse("kill 2").unwrap(), Some(Command::Kill(2)));
        assert_eq!(parse("kill %3").unwrap(), Some(Command::Kill(3)));
        assert!(parse("kill").is_err());
        assert!(parse("kill 0").is_err());
        assert!(parse("kill one").is_err());
        assert_eq!(parse("wait").unwrap(), Some(Command::Wait));
    }

    /// `history` takes a count and a word, in either order, and picks the newest matches.
    #[test]
    fn history_count_and_word() {
        let query = |count: Option<usize>, word: Option<&str>| {
            Some(Command::History(HistoryQuery {
                count,
                word: word.map(str::to_string),
            }))
        };
        assert_eq!(parse("history").unwrap(), query(None, None));
        assert_eq!(parse("history 20").unwrap(), query(Some(20), None));
        assert_eq!(
            parse("history download").unwrap(),
            query(None, Some("download"))
        );
        assert_eq!(parse("history udp 5").unwrap(), query(Some(5), Some("udp")));
        assert!(parse("history 0").is_err());
        assert!(parse("history 1 2").is_err());
        assert!(parse("history a b").is_err());
        let picked = HistoryQuery {
            count: Some(2),
            word: Some("DOWN".into()),
        }
        .select(
            vec!["download a", "index", "download b", "download c"],
            |r| r.to_string(),
        );
        assert_eq!(picked, vec!["download b", "download c"]);
    }

    /// A download written back as a line reads the same, rate included.
    #[test]
    fn download_lines() {
        let name = RelPath::parse("music/song one.mp3").unwrap();
        assert_eq!(
            download_line(Transport::Udp, &name, Some(1_000_000)),
            "download udp 'music/song one.mp3' --max-rate 8M"
        );
        assert_eq!(
            download_line(Transport::Tcp, &name, None),
            "download tcp 'music/song one.mp3'"
        );
        let line = download_line(Transport::Udp, &name, Some(62_500));
        assert_eq!(
            parse(&line).unwrap(),
            Some(Command::Download {
                transport: Transport::Udp,
                name,
                max_rate: Some(62_500),
            })
        );
    }

    /// A pattern or a trailing `/` makes a several-file download, `get` is `download tcp`,
    /// and `ls`, `cd`, `pwd` take what sftp's do; bad patterns are refused before
    /// anything is sent.
    #[test]
    fn several_files_and_sftp_names() {
        let many = |transport, selection| {
            Some(Command::DownloadMany {
                transport,
                selection,
                max_rate: None,
            })
        };
        let glob = |p: &str| Selection::Glob(p.to_string());
        let folder = |p: &str| Selection::Path(RelPath::parse(p).unwrap());
        assert_eq!(
            parse("download tcp '*.txt'").unwrap(),
            many(Transport::Tcp, glob("*.txt"))
        );
        assert_eq!(
            parse("download udp music/").unwrap(),
            many(Transport::Udp, folder("music"))
        );
        assert_eq!(
            parse("get 'docs/**/*.md'").unwrap(),
            many(Transport::Tcp, glob("docs/**/*.md"))
        );
        assert_eq!(
            parse("GET music/").unwrap(),
            many(Transport::Tcp, folder("music"))
        );
        assert_eq!(
            parse("get a.mp3").unwrap(),
            Some(Command::Download {
                transport: Transport::Tcp,
                name: RelPath::parse("a.mp3").unwrap(),
                max_rate: None,
            })
        );
        // Not a valid glob: a name.
        assert_eq!(
            parse("get 'a[1'").unwrap(),
            Some(Command::Download {
                transport: Transport::Tcp,
                name: RelPath::parse("a[1").unwrap(),
                max_rate: None,
            })
        );
        assert!(matches!(
            parse("get '*.iso' &").unwrap(),
            Some(Command::Background(inner)) if matches!(*inner, Command::DownloadMany { .. })
        ));
        assert!(matches!(
            parse("download udp '*.iso' --max-rate 8M").unwrap(),
            Some(Command::DownloadMany {
                max_rate: Some(1_000_000),
                ..
            })
        ));
        for bad in [
            "get",
            "get a b",
            "get '../*'",
            // A leading `/` is the top of the peer's folder: nothing above it.
            "get '/../*'",
            "get ../x",
            "ls -x",
            "ls a b",
            "ls '../*'",
            "cd a b",
            "pwd x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("ls").unwrap(),
            Some(Command::Ls {
                long: false,
                target: None
            })
        );
        assert_eq!(
            parse("ls music -l").unwrap(),
            Some(Command::Ls {
                long: true,
                target: Some(folder("music"))
            })
        );
        assert_eq!(
            parse("ls -l '*.txt'").unwrap(),
            Some(Command::Ls {
                long: true,
                target: Some(glob("*.txt"))
            })
        );
        assert_eq!(parse("cd").unwrap(), Some(Command::Cd(None)));
        assert_eq!(
            parse("cd ..").unwrap(),
            Some(Command::Cd(Some("..".into())))
        );
        assert_eq!(parse("pwd").unwrap(), Some(Command::Pwd));
        assert_eq!(
            download_many_line(Transport::Udp, &glob("*.txt"), Some(1_000_000)),
            "download udp '*.txt' --max-rate 8M"
        );
        assert_eq!(
            download_many_line(Transport::Tcp, &folder("my music"), None),
            "download tcp 'my music'/"
        );
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
            "download tcp /../etc/passwd",
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
