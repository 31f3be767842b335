//! The command line: clap's options, turned into a validated [`Config`] before any work
//! starts, so that the rest of the program never sees a half-checked option.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use boxsync::config::BoxConfig;
use boxsync::local::Settings;
use boxsync::parse::parse_rate;

use boxsync::shell::Format;
use boxsync::sync::{PeerSpec, SyncConfig};
use boxsync::types::BoxId;

/// The shared folder when neither -d nor a --config file names one.
const DEFAULT_DIR: &str = "./shared";
/// The server address when neither -l nor the settings file gives one.
const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// The auto-sync period, in seconds, when neither --sync nor the settings file gives one.
pub const DEFAULT_SYNC: u64 = 10;
/// The period of the full rescan, in seconds, when neither --rescan nor the settings file
/// gives one: an hour, as Syncthing's (the watcher reports changes meanwhile).
pub const DEFAULT_RESCAN: u64 = 3600;
/// How many days sync keeps old versions when neither --trash-days nor the file says.
const DEFAULT_TRASH_DAYS: u64 = 30;

/// Exit status when a command failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (clap uses the same).
pub const EXIT_USAGE: u8 = 2;

/// Keeps a folder identical on several machines and lets you work with a peer's folder.
#[derive(Parser, Debug)]
#[command(
    name = "boxsync",
    version,
    about,
    long_about = "Keeps a folder identical on several machines (\"boxes\") and lets you work \
with a peer's folder from an interactive shell: list it, verify hashes, download files \
(verified, atomically), in the background too. Without a subcommand, starts a box: its \
server plus a shell whose commands go to the first --peer. Type 'help' at the prompt for \
the shell's commands; Tab completes them and the peer's file names.",
    after_help = "Examples:\n  boxsync id -d ~/shared                                     this box's ID, to give to peers\n  boxsync trust ID -d ~/shared --name laptop                 let box ID in, for good\n  boxsync -d ~/shared -l 0.0.0.0:7001 -p ID@192.0.2.7:7002   a box with a shell\n  boxsync serve -d ~/shared -l 0.0.0.0:7002                  a box without a shell\n  boxsync -p ID@127.0.0.1:7002 -c 'index longlist' --json    one command, JSON out\n  boxsync demo                                               two local boxes to try"
)]
pub struct Cli {
    /// What to start; without one, a box with an interactive shell.
    #[command(subcommand)]
    mode: Option<Mode>,

    /// The shared folder (created if missing). [default: ./shared]
    ///
    /// Its subfolder .boxsync/ keeps the box's own state (id, settings, hash cache, request
    /// log, shell history, logs) and is never shared. Example: -d ~/shared
    #[arg(short = 'd', long = "dir", value_name = "DIR", global = true)]
    dir: Option<PathBuf>,

    /// Read the box's settings from FILE instead of DIR/.boxsync/config.toml.
    ///
    /// The settings (listen, peers, trust, sync, max_rate, trash_days, discovery,
    /// tcp_congestion; TOML) are written back to DIR/.boxsync/config.toml when a box
    /// starts, so that a plain `boxsync serve -d DIR` resumes it. Flags given on the
    /// command line override the file. FILE may also name the shared folder (folder =
    /// "..."), used when -d is not given. Example: --config ~/laptop.toml
    #[arg(long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// TCP and UDP address of this box's server. [default: 127.0.0.1:7878]
    ///
    /// Port 0 picks a free port (the shell's first line and 'serve' print it). 'none'
    /// listens nowhere: the box only dials out (a laptop behind NAT), and its peers reach
    /// it over the sessions it opens. Examples: -l 0.0.0.0:7001 (reachable from other
    /// machines), -l 127.0.0.1:0, -l none
    #[arg(short = 'l', long = "listen", value_name = "ADDR", global = true)]
    listen: Option<String>,

    /// A peer box, ID@HOST:PORT (may repeat; the first is the shell's current peer).
    ///
    /// ID is the peer's box ID (`boxsync id` on it prints it): the link is refused unless
    /// that box answers, and this box trusts it for this run. The shell's 'peer' command
    /// switches between them; auto-sync syncs with all of them. Prefix udp:// to make sync
    /// fetch from a peer over UDP. Example: -p ID@192.0.2.7:7002 -p udp://ID@192.0.2.8:7002
    #[arg(short = 'p', long = "peer", value_name = "ID@ADDR", global = true)]
    peers: Vec<String>,

    /// Do not announce this box on the local network, nor look for peers there.
    ///
    /// By default a listening box broadcasts its ID and port on UDP 21025 every 30 s, and
    /// a peer given by ID alone (-p ID) is dialed where it announced itself. Announcements
    /// carry nothing secret; the box that answers must still prove its ID.
    #[arg(long, global = true)]
    no_discovery: bool,

    /// Trust box ID for this run without dialing it (may repeat): it may connect to this
    /// box and sync with it. `boxsync trust ID` trusts it for good.
    #[arg(long = "trust", value_name = "ID", global = true)]
    trust: Vec<String>,

    /// Auto-sync with every peer: a round with each every SECS seconds (changes are also
    /// picked up within about a second by a file-system watcher); 0 turns it off. Boxes
    /// that dial in are synced with too. Without a watcher, each round reads the whole
    /// folder. [default: 10]
    #[arg(long = "sync", value_name = "SECS", global = true)]
    sync: Option<u64>,

    /// While the file-system watcher runs, read the whole folder afresh every SECS seconds
    /// (a walk that only stats, hashing what changed), to catch what the watcher missed;
    /// between rescans only the parts it reported are read. [default: 3600]
    #[arg(long = "rescan", value_name = "SECS", global = true, value_parser = clap::value_parser!(u64).range(1..))]
    rescan: Option<u64>,

    /// How long sync keeps replaced and deleted versions in .boxsync/trash/. [default: 30]
    #[arg(long, value_name = "DAYS", global = true)]
    trash_days: Option<u64>,

    /// Run one shell command against the current peer, print the result, exit (may
    /// repeat; no server is started).
    ///
    /// Exit status 0 if every command succeeded, 1 if one failed, 2 if one was not
    /// understood (a usage error). Example: -c 'index glob "*.mp3"' -c 'download tcp
    /// notes.txt'
    #[arg(short = 'c', value_name = "COMMAND")]
    commands: Vec<String>,

    /// Machine-readable output: one JSON document per command.
    ///
    /// For -c and for commands piped on standard input; no colours, no progress bars.
    /// Example: boxsync -p 127.0.0.1:7002 --json -c 'hash checkall'
    #[arg(long, global = true)]
    json: bool,

    /// TCP congestion control for this box's connections (cubic, bbr, reno...), like
    /// iperf3's -C; default: the kernel's.
    ///
    /// Example: --tcp-congestion bbr (see /proc/sys/net/ipv4/tcp_available_congestion_control)
    #[arg(long, value_name = "ALGO", global = true)]
    tcp_congestion: Option<String>,

    /// Cap on the rate of each UDP transfer this box serves or asks for: bits per second
    /// (500k, 50M, 1G) or bytes per second (50MB).
    ///
    /// Example: --max-rate 50M (50 Mbit/s). A download's own --max-rate takes precedence
    /// for that download.
    #[arg(long, value_name = "RATE", global = true, value_parser = check_rate_arg)]
    max_rate: Option<String>,

    /// The interactive shell asks before it shows more than N entries of one listing
    /// (index, hash checkall); no stops the listing. 0 never asks. [default: 10000]
    ///
    /// Only at the prompt: -c commands, piped commands and --json never ask. Example:
    /// --ask-over 0
    #[arg(long, value_name = "N", global = true)]
    ask_over: Option<usize>,

    /// More detailed logs (-v: debug, -vv: trace); RUST_LOG overrides.
    ///
    /// Logs go to DIR/.boxsync/log/ (rotated daily), or to stderr for 'serve', never onto
    /// the prompt. Examples: -vv, RUST_LOG=boxsync=debug
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Start a box without a shell; runs until SIGINT or SIGTERM, then shuts down cleanly.
    #[command(
        long_about = "Starts a box without a shell: its server answers peers' requests about \
the shared folder until SIGINT or SIGTERM, then shuts down cleanly. Prints one line once it \
listens ('boxsync box <id> serving <dir> on <addr>'); logs go to stderr.",
        after_help = "Examples:\n  boxsync serve -d ~/shared -l 0.0.0.0:7002              serve ~/shared to other machines\n  boxsync serve -d /tmp/b -l 127.0.0.1:0                 a free port, printed on start\n  boxsync serve -d ~/shared --max-rate 100M -v           cap UDP transfers, debug logs"
    )]
    Serve,
    /// Two boxes with sample files in a temporary folder; the shell runs on the first and
    /// its peer is the second.
    #[command(after_help = "Example:\n  boxsync demo")]
    Demo,
    /// Print this box's ID (creating its key on first use): give it to the boxes that
    /// should trust this one.
    #[command(after_help = "Examples:\n  boxsync id -d ~/shared\n  boxsync id -d ~/shared --json")]
    Id,
    /// Trust box ID for good: it may connect to this box, and sync with it. A running box
    /// sees the change at the next connection, without a restart.
    #[command(
        after_help = "Examples:\n  boxsync trust ID -d ~/shared\n  boxsync trust ID -d ~/shared --name laptop"
    )]
    Trust {
        /// The box's ID, as `boxsync id` prints it on that box.
        id: String,
        /// A name to show for it (`peers`).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Stop trusting box ID: its open connections close at their next request.
    #[command(after_help = "Example:\n  boxsync untrust ID -d ~/shared")]
    Untrust {
        /// The box's ID.
        id: String,
    },
    /// Print a one-line invitation to this box, valid once for 10 minutes: `boxsync join
    /// LINE` on another box makes the two trust each other. This box must be running
    /// (serving) for the other to join.
    #[command(
        after_help = "Example:\n  boxsync invite -d ~/shared      then, on the other box: boxsync join - -d ~/shared (and paste the line)"
    )]
    Invite,
    /// Join the box that printed LINE (`boxsync invite`): the two boxes trust each other.
    #[command(
        after_help = "Examples:\n  boxsync join - -d ~/shared      then paste the line and press Enter (kept out of the process list)\n  boxsync join 'boxsync-invite:ID@192.0.2.7:7001#SECRET' -d ~/shared"
    )]
    Join {
        /// The line `boxsync invite` printed on the other box, or `-` to read it from
        /// standard input (which keeps the secret out of the process list, where other
        /// users of this machine could read it).
        line: String,
    },
    /// Show the box's peers and trusted boxes, as it would start with these flags.
    ///
    /// Its settings file with the flags given over it: the listen address and sync period
    /// first, then each peer's ID, address (or "by ID"), transport, trust (kept or this
    /// run) and name, then the boxes it trusts that are not peers (they may dial in).
    #[command(after_help = "Examples:\n  boxsync peers -d ~/shared\n  boxsync peers --json")]
    Peers,
}

/// The validated configuration: everything checked before any work starts.
pub struct Config {
    /// What to run.
    pub run: Run,
    /// The shared folder.
    pub dir: PathBuf,
    /// Whether a person named the folder (-d, or a --config file); `false`: the default
    /// `./shared`, which a read-only script must not create.
    pub dir_named: bool,
    /// The server address; `None` listens nowhere (`-l none`).
    pub listen: Option<SocketAddr>,
    /// Peers, validated.
    pub peers: Vec<PeerSpec>,
    /// Boxes trusted for this run (`--trust`).
    pub trust: Vec<BoxId>,
    /// Auto-sync settings, when it runs.
    pub sync: Option<SyncConfig>,
    /// Output format for scripts.
    pub format: Format,
    /// Log verbosity.
    pub verbose: u8,
    /// The interactive shell asks before showing more than this many entries of a
    /// listing; `None`: never.
    pub ask_over: Option<usize>,
    /// Socket tunables.
    pub settings: Settings,
    /// Whether local discovery runs.
    pub discovery: bool,
    /// The settings file that was read (DIR/.boxsync/config.toml, or --config's).
    pub config_file: PathBuf,
    /// The settings to write back to DIR/.boxsync/config.toml when a box starts: the file
    /// read, with the flags given over it (never the built-in defaults, so that a later
    /// version's defaults still apply to what nobody chose).
    pub saved: BoxConfig,
}

/// The ways the program runs.
pub enum Run {
    /// Server and interactive shell.
    Interactive,
    /// Server only.
    Serve,
    /// Two local boxes and a shell.
    Demo,
    /// `-c` commands, no server.
    Commands(Vec<String>),
    /// Commands from a non-terminal stdin, no server.
    Stdin,
    /// Print the box's ID.
    Id,
    /// Trust a box for good.
    Trust {
        /// Its ID.
        id: BoxId,
        /// Its name.
        name: Option<String>,
    },
    /// Stop trusting a box.
    Untrust(BoxId),
    /// Show the peers and the trusted boxes.
    Peers,
    /// Print an invitation.
    Invite,
    /// Join with an invitation.
    Join(boxsync::invite::Invitation),
}

impl Config {
    /// Checks every option; `stdin_is_terminal` tells an interactive start from piped
    /// commands.
    pub fn from_cli(cli: Cli, stdin_is_terminal: bool) -> Result<Config> {
        let flags = BoxConfig {
            folder: None,
            listen: cli.listen.clone(),
            peers: cli.peers.clone(),
            trust: cli.trust.clone(),
            sync: cli.sync,
            rescan: cli.rescan,
            max_rate: cli.max_rate.clone(),
            trash_days: cli.trash_days,
            discovery: cli.no_discovery.then_some(false),
            tcp_congestion: cli.tcp_congestion.clone(),
        };
        let (file, config_file, dir) = read_settings(&cli)?;
        let merged = file.merged_with(&flags);
        let listen = match merged.listen.as_deref().unwrap_or(DEFAULT_LISTEN) {
            "none" => None,
            addr => Some(resolve(addr)?),
        };
        let peers = merged
            .peers
            .iter()
            .map(|p| PeerSpec::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        // Sync runs with no peer given too: boxes that dial in are synced with.
        let period = merged.sync.unwrap_or(DEFAULT_SYNC);
        let trash_days = merged.trash_days.unwrap_or(DEFAULT_TRASH_DAYS);
        let rescan = merged.rescan.unwrap_or(DEFAULT_RESCAN);
        let sync = (period > 0).then(|| SyncConfig {
            period: std::time::Duration::from_secs(period),
            rescan: std::time::Duration::from_secs(rescan.max(1)),
            trash_retention: std::time::Duration::from_secs(trash_days.saturating_mul(86_400)),
        });
        let trust = merged
            .trust
            .iter()
            .map(|id| BoxId::parse(id))
            .collect::<Result<Vec<_>, _>>()?;
        let max_rate = merged.max_rate.as_deref().map(parse_rate).transpose()?;
        let run = match cli.mode {
            Some(_) if !cli.commands.is_empty() => {
                bail!("-c cannot be combined with a subcommand")
            }
            Some(Mode::Serve) => Run::Serve,
            Some(Mode::Demo) => Run::Demo,
            Some(Mode::Id) => Run::Id,
            Some(Mode::Trust { id, name }) => Run::Trust {
                id: BoxId::parse(&id)?,
                name,
            },
            Some(Mode::Untrust { id }) => Run::Untrust(BoxId::parse(&id)?),
            Some(Mode::Peers) => Run::Peers,
            Some(Mode::Invite) => Run::Invite,
            Some(Mode::Join { line }) => {
                let line = if line == "-" {
                    let mut read = String::new();
                    std::io::stdin()
                        .read_line(&mut read)
                        .context("cannot read the invitation from standard input")?;
                    read
                } else {
                    line
                };
                Run::Join(boxsync::invite::Invitation::parse(&line)?)
            }
            None if !cli.commands.is_empty() => Run::Commands(cli.commands),
            None if stdin_is_terminal => Run::Interactive,
            None => Run::Stdin,
        };
        if let Some(algorithm) = &merged.tcp_congestion
            && !boxsync::net::tcp_congestion_available(algorithm)
        {
            bail!("TCP congestion control '{algorithm}' is not available on this system");
        }
        Ok(Config {
            settings: Settings {
                tcp_congestion: merged.tcp_congestion.clone(),
                max_udp_rate: max_rate,
            },
            run,
            dir_named: cli.dir.is_some() || cli.config.is_some(),
            dir,
            listen,
            peers,
            trust,
            sync,
            format: if cli.json {
                Format::Json
            } else {
                Format::Human
            },
            verbose: cli.verbose,
            ask_over: Some(cli.ask_over.unwrap_or(boxsync::shell::listing::ASK_OVER))
                .filter(|&n| n > 0),
            discovery: merged.discovery.unwrap_or(true),
            config_file,
            saved: BoxConfig {
                folder: None,
                ..merged
            },
        })
    }
}

/// Checks `--max-rate` as clap reads it, keeping the text (the settings file keeps it so).
fn check_rate_arg(text: &str) -> Result<String, String> {
    parse_rate(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// The settings file to read, what it says, and the shared folder: `-d`, else the
/// `--config` file's `folder` (relative to that file's folder), else ./shared. Without
/// `--config` the file is DIR/.boxsync/config.toml, and one not there yet says nothing.
fn read_settings(cli: &Cli) -> Result<(BoxConfig, PathBuf, PathBuf)> {
    let demo = matches!(cli.mode, Some(Mode::Demo));
    match &cli.config {
        Some(file) => {
            let settings = BoxConfig::read(file, false)?;
            let dir = match (&cli.dir, &settings.folder) {
                (Some(dir), _) => dir.clone(),
                (None, Some(folder)) => file.parent().unwrap_or(Path::new(".")).join(folder),
                (None, None) => PathBuf::from(DEFAULT_DIR),
            };
            Ok((settings, file.clone(), dir))
        }
        None => {
            let dir = cli
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
            let file = BoxConfig::path_in(&boxsync::share::state::existing(&dir));
            // The demo's boxes live in a temporary folder, not in DIR.
            let settings = if demo {
                BoxConfig::default()
            } else {
                BoxConfig::read(&file, true)?
            };
            if let Some(folder) = &settings.folder {
                bail!(
                    "{}: folder = {folder:?} belongs only in a file given with --config (this file lives in its folder)",
                    file.display()
                );
            }
            Ok((settings, file, dir))
        }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("bad listen address '{addr}': expected HOST:PORT"))?
        .next()
        .with_context(|| format!("listen address '{addr}' resolves to nothing"))
}
