//! The `boxsync` command: parses the command line into a validated configuration, then
//! starts what it asks for (server, shell, script, demo). Nothing else lives here.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::runtime::{Handle, Runtime};

use boxsync::local::{LocalBox, Settings};
use boxsync::peer::Peer;
use boxsync::server::Server;
use boxsync::shell::command::check_peer_address;
use boxsync::shell::{Format, Session, repl};
use boxsync::sync::{PeerSpec, SyncConfig, SyncTransport};

/// The allocator: a sync of many small files makes many small, short-lived allocations per
/// file (paths, frames, entries), which mimalloc serves with less CPU than the system's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when a command failed.
const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (clap uses the same).
const EXIT_USAGE: u8 = 2;

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
    after_help = "Examples:\n  boxsync -d ~/shared -l 0.0.0.0:7001 -p 192.0.2.7:7002     a box with a shell\n  boxsync serve -d ~/shared -l 0.0.0.0:7002                  a box without a shell\n  boxsync -p 127.0.0.1:7002 -c 'index longlist' --json      one command, JSON out\n  boxsync demo                                              two local boxes to try"
)]
struct Cli {
    /// What to start; without one, a box with an interactive shell.
    #[command(subcommand)]
    mode: Option<Mode>,

    /// The shared folder (created if missing).
    ///
    /// Its subfolder .boxsync/ keeps the box's own state (id, hash cache, request log,
    /// shell history, logs) and is never shared. Example: -d ~/shared
    #[arg(
        short = 'd',
        long = "dir",
        value_name = "DIR",
        default_value = "./shared",
        global = true
    )]
    dir: PathBuf,

    /// TCP and UDP address of this box's server.
    ///
    /// Port 0 picks a free port (the shell's first line and 'serve' print it).
    /// Examples: -l 0.0.0.0:7001 (reachable from other machines), -l 127.0.0.1:0
    #[arg(
        short = 'l',
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:7878",
        global = true
    )]
    listen: String,

    /// A peer box, HOST:PORT (may repeat; the first is the shell's current peer).
    ///
    /// The shell's 'peer' command switches between them; auto-sync syncs with all of them.
    /// Prefix udp:// to make sync fetch from a peer over UDP. Example: -p 192.0.2.7:7002
    /// -p udp://192.0.2.8:7002
    #[arg(short = 'p', long = "peer", value_name = "ADDR", global = true)]
    peers: Vec<String>,

    /// Auto-sync with every peer: the period of the full rescan in seconds (changes are
    /// also picked up within about a second by a file-system watcher); 0 turns it off.
    /// [default: 10 when a peer is given]
    #[arg(long = "sync", value_name = "SECS", global = true)]
    sync: Option<u64>,

    /// How long sync keeps replaced and deleted versions in .boxsync/trash/.
    #[arg(long, value_name = "DAYS", default_value_t = 30, global = true)]
    trash_days: u64,

    /// Run one shell command against the current peer, print the result, exit (may
    /// repeat; no server is started).
    ///
    /// Exit status 0 if every command succeeded, 1 if one failed. Example: -c 'index glob
    /// "*.mp3"' -c 'download tcp notes.txt'
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
    #[arg(long, value_name = "RATE", global = true, value_parser = parse_rate_arg)]
    max_rate: Option<u64>,

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
}

/// The validated configuration: everything checked before any work starts.
struct Config {
    /// What to run.
    run: Run,
    /// The shared folder.
    dir: PathBuf,
    /// The server address.
    listen: SocketAddr,
    /// Peers, validated.
    peers: Vec<PeerSpec>,
    /// Auto-sync settings, when it runs.
    sync: Option<SyncConfig>,
    /// Output format for scripts.
    format: Format,
    /// Log verbosity.
    verbose: u8,
    /// Socket tunables.
    settings: Settings,
}

/// The ways the program runs.
enum Run {
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
}

impl Config {
    fn from_cli(cli: Cli) -> Result<Config> {
        let listen = resolve(&cli.listen)?;
        let peers = cli
            .peers
            .iter()
            .map(|p| {
                let spec = PeerSpec::parse(p);
                check_peer_address(&spec.addr).map_err(anyhow::Error::from)?;
                Ok(spec)
            })
            .collect::<Result<Vec<_>>>()?;
        let period = cli.sync.unwrap_or(if peers.is_empty() { 0 } else { 10 });
        let sync = (period > 0 && !peers.is_empty()).then(|| SyncConfig {
            period: std::time::Duration::from_secs(period),
            trash_retention: std::time::Duration::from_secs(cli.trash_days * 86_400),
        });
        let run = match cli.mode {
            Some(_) if !cli.commands.is_empty() => {
                bail!("-c cannot be combined with serve or demo")
            }
            Some(Mode::Serve) => Run::Serve,
            Some(Mode::Demo) => Run::Demo,
            None if !cli.commands.is_empty() => Run::Commands(cli.commands),
            None if std::io::stdin().is_terminal() => Run::Interactive,
            None => Run::Stdin,
        };
        if let Some(algorithm) = &cli.tcp_congestion
            && !boxsync::net::tcp_congestion_available(algorithm)
        {
            bail!("TCP congestion control '{algorithm}' is not available on this system");
        }
        Ok(Config {
            settings: Settings {
                tcp_congestion: cli.tcp_congestion,
                max_udp_rate: cli.max_rate,
            },
            run,
            dir: cli.dir,
            listen,
            peers,
            sync,
            format: if cli.json {
                Format::Json
            } else {
                Format::Human
            },
            verbose: cli.verbose,
        })
    }
}

fn parse_rate_arg(text: &str) -> Result<u64, String> {
    boxsync::shell::command::parse_rate(text).map_err(|e| e.to_string())
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("bad listen address '{addr}': expected HOST:PORT"))?
        .next()
        .with_context(|| format!("listen address '{addr}' resolves to nothing"))
}

fn main() -> ExitCode {
    raise_open_files_limit();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("boxsync: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            eprintln!("boxsync: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Runs the configured mode; `Ok(false)` when a command failed.
fn run(config: Config) -> Result<bool> {
    let runtime = Runtime::new().context("cannot start the async runtime")?;
    let handle = runtime.handle().clone();
    match config.run {
        Run::Demo => return demo(&handle, config.verbose),
        Run::Serve => {
            let _log = init_logging(None, config.verbose);
            let local = LocalBox::open_with(&config.dir, config.settings.clone())?;
            return handle
                .block_on(serve(local, config.listen, &config.peers, config.sync))
                .map(|_| true);
        }
        _ => {}
    }
    let local = LocalBox::open_with(&config.dir, config.settings.clone())?;
    let _log = init_logging(Some(&local.share.state_dir()), config.verbose);
    let addrs: Vec<String> = config.peers.iter().map(|p| p.addr.clone()).collect();
    let mut session = Session::new(Arc::clone(&local), &addrs);
    match config.run {
        Run::Commands(commands) => Ok(repl::run_script(
            &handle,
            &mut session,
            commands,
            config.format,
        )),
        Run::Stdin => Ok(repl::run_stdin(&handle, &mut session, config.format)),
        _ => {
            let server = handle.block_on(Server::bind(Arc::clone(&local), config.listen))?;
            println!(
                "boxsync box {} serving {} on {}; type 'help' for commands",
                local.id,
                local.share.root().display(),
                server.local_addr()
            );
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let serving = handle.spawn(server.run(wait_for(stopped.clone())));
            if let Some(sync) = config.sync {
                let _guard = handle.enter();
                let peers = sync_peers(&session, &config.peers);
                session.set_sync(boxsync::sync::start(
                    Arc::clone(&local),
                    peers,
                    sync,
                    wait_for(stopped),
                ));
            }
            let result = repl::run_interactive(&handle, &mut session, shell_history(&local));
            let _ = stop.send(true);
            let _ = handle.block_on(serving);
            result.context("the shell failed")?;
            Ok(true)
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone).
async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// The session's peer clients paired with the transport sync uses for each.
fn sync_peers(session: &Session, specs: &[PeerSpec]) -> Vec<(Arc<Peer>, SyncTransport)> {
    session
        .peers()
        .iter()
        .zip(specs)
        .map(|(peer, spec)| (Arc::clone(peer), spec.transport))
        .collect()
}

/// `boxsync serve`: the server (and sync, with peers) until SIGINT or SIGTERM.
async fn serve(
    local: Arc<LocalBox>,
    listen: SocketAddr,
    peers: &[PeerSpec],
    sync: Option<SyncConfig>,
) -> Result<()> {
    let server = Server::bind(Arc::clone(&local), listen).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(sync) = sync {
        let peers = peers
            .iter()
            .map(|spec| {
                (
                    Arc::new(Peer::new(&spec.addr, Arc::clone(&local))),
                    spec.transport,
                )
            })
            .collect();
        boxsync::sync::start(Arc::clone(&local), peers, sync, wait_for(stopped));
    }
    tracing::info!(
        addr = %server.local_addr(),
        dir = %local.share.root().display(),
        box_id = %local.id,
        "serving"
    );
    // Scripts (and tests) started with port 0 read the bound address from this line.
    println!(
        "boxsync box {} serving {} on {}",
        local.id,
        local.share.root().display(),
        server.local_addr()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    server
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        })
        .await;
    let _ = stop.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// `boxsync demo`: two boxes in a temporary folder, the shell on the first.
fn demo(handle: &Handle, verbose: u8) -> Result<bool> {
    let temp = tempfile::Builder::new()
        .prefix("boxsync-demo-")
        .tempdir()
        .context("cannot create the demo folder")?;
    let (dir_a, dir_b) = (temp.path().join("box-a"), temp.path().join("box-b"));
    boxsync::demo::populate(&dir_a, &dir_b).context("cannot write the demo files")?;
    let box_a = LocalBox::open(&dir_a)?;
    let box_b = LocalBox::open(&dir_b)?;
    let _log = init_logging(Some(&box_a.share.state_dir()), verbose);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server_a = handle.block_on(Server::bind(Arc::clone(&box_a), loopback))?;
    let server_b = handle.block_on(Server::bind(Arc::clone(&box_b), loopback))?;
    let (addr_a, addr_b) = (server_a.local_addr(), server_b.local_addr());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for server in [server_a, server_b] {
        let mut stopped = stopped.clone();
        handle.spawn(server.run(async move {
            let _ = stopped.changed().await;
        }));
    }
    println!(
        "boxsync demo: two boxes on this machine, in {}",
        temp.path().display()
    );
    println!("  this box (A)  {}  serving {}", addr_a, dir_a.display());
    println!("  peer box (B)  {}  serving {}", addr_b, dir_b.display());
    println!();
    println!("Try, in this order (Tab completes commands and box B's file names):");
    println!("  index longlist                     what box B shares");
    println!("  index glob '*.txt'                 only text files, at any depth");
    println!("  hash verify hello.txt              MD5 and SHA-256 of a file on B");
    println!("  download tcp mu<Tab><Tab>          completes \"music/song one.mp3\"; Enter");
    println!("  download udp data/big.bin --max-rate 8M &");
    println!("                                     a slow download in the background");
    println!("  jobs                               its progress; 'kill 1' cancels it");
    println!("  wait                               progress bars until it is done");
    println!("  history                            what was asked and answered");
    println!("  help                               everything else; Ctrl-D or quit to leave");
    println!(
        "(Auto-sync is off in the demo so that you fetch by hand; the README shows two boxes\n kept in sync with --peer.)"
    );
    println!();
    let mut session = Session::new(Arc::clone(&box_a), &[addr_b.to_string()]);
    let result = repl::run_interactive(handle, &mut session, shell_history(&box_a));
    let _ = stop.send(true);
    result.context("the shell failed")?;
    Ok(true)
}

/// Where the interactive shell keeps its line history.
fn shell_history(local: &LocalBox) -> PathBuf {
    local.share.state_dir().join("shell-history")
}

/// Logs go to stderr for `serve`, and to `.boxsync/log/` (rotated daily) when a shell or
/// script owns the terminal. The guard flushes the file writer when dropped.
fn init_logging(
    state_dir: Option<&Path>,
    verbose: u8,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    match state_dir {
        None => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init();
            None
        }
        Some(state) => {
            std::fs::create_dir_all(state.join("log")).ok()?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("boxsync")
                .filename_suffix("log")
                .max_log_files(7)
                .build(state.join("log"))
                .ok()?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(false)
                .try_init();
            Some(guard)
        }
    }
}

/// A batch of small files keeps each one open until the batch is installed (unnamed
/// files, see `boxsync::share::staged`), and batches can take up to half the open-files
/// limit. The usual soft limit of 1,024 exists for programs using `select()`, which boxsync
/// does not, so it is raised to the hard limit, as systemd's documentation advises such
/// programs to do.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        // Best effort: with the limit as it was, more files are staged by name.
        let _ = setrlimit(Resource::Nofile, raised);
    }
}
