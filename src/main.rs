//! The `boxsync` command: [`cli`] turns the command line into a validated configuration,
//! then this starts what it asks for (server, shell, script, demo). Nothing else lives here.

mod cli;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::runtime::{Handle, Runtime};

use boxsync::config::BoxConfig;
use boxsync::identity::Identity;
use boxsync::local::{LocalBox, OpenError};
use boxsync::peer::Peer;
use boxsync::server::Server;
use boxsync::share::ShareError;
use boxsync::shell::repl::ScriptStatus;
use boxsync::shell::{Session, output, repl};
use boxsync::sync::{PeerSpec, SyncConfig};
use boxsync::trust::Trust;
use boxsync::types::{PeerAddress, Transport};

use cli::{Cli, Config, EXIT_FAILED, EXIT_USAGE, Run};

/// The allocator: a sync of many small files makes many small, short-lived allocations per
/// file (paths, frames, entries), which mimalloc serves with less CPU than the system's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raise_open_files_limit();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let config = match Config::from_cli(cli, std::io::stdin().is_terminal()) {
        Ok(config) => config,
        Err(e) => {
            output::print_error_line(&format!("boxsync: {}", one_line(&e)));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(config) {
        Ok(ScriptStatus::Succeeded) => ExitCode::SUCCESS,
        Ok(ScriptStatus::Failed) => ExitCode::from(EXIT_FAILED),
        Ok(ScriptStatus::Refused) => ExitCode::from(EXIT_USAGE),
        Err(e) => {
            output::print_error_line(&format!("boxsync: {}", one_line(&e)));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// An error and its causes on one line, as `{:#}` writes them (`context: cause: cause`).
/// Each cause is said once because no error of boxsync's both quotes its cause in its
/// message and returns it as its source. The line is escaped ([`boxsync::text::escape`]):
/// a cause may quote a peer or a name on disk.
fn one_line(error: &anyhow::Error) -> String {
    boxsync::text::escape(&format!("{error:#}")).into_owned()
}

/// Runs the configured mode; for a script, how its commands went.
fn run(config: Config) -> Result<ScriptStatus> {
    let runtime = Runtime::new().context("cannot start the async runtime")?;
    let handle = runtime.handle().clone();
    match &config.run {
        Run::Demo => return demo(&handle, config.verbose, config.ask_over),
        Run::Id | Run::Trust { .. } | Run::Untrust(_) | Run::Peers | Run::Invite => {
            return identity_command(&config);
        }
        Run::Join(invitation) => return join(&handle, &config, invitation),
        Run::Serve => {
            let _log = init_logging(None, config.verbose);
            let local = LocalBox::open_with(&config.dir, config.settings.clone())?;
            apply_trust(&local, &config);
            save_settings(&local, &config);
            let sync = unless_read_only(&local, config.sync);
            return handle
                .block_on(serve(
                    local,
                    config.listen,
                    config.discovery,
                    &config.peers,
                    sync,
                ))
                .map(|()| ScriptStatus::Succeeded);
        }
        _ => {}
    }
    let (local, _scratch) = open_client_box(&config)?;
    apply_trust(&local, &config);
    let _log = init_logging(Some(&local.share.state_dir()), config.verbose);
    let clients = config
        .peers
        .iter()
        .map(|spec| Arc::new(spec.client(Arc::clone(&local))))
        .collect();
    let mut session = Session::with_peers(Arc::clone(&local), clients);
    if matches!(config.run, Run::Commands(_) | Run::Stdin) {
        // No server runs: what a peer asks over this box's sessions is refused at once.
        local.links.stop_inbound();
    }
    match config.run {
        Run::Commands(commands) => Ok(repl::run_script(
            &handle,
            &mut session,
            commands,
            config.format,
        )),
        Run::Stdin => Ok(repl::run_stdin(&handle, &mut session, config.format)),
        _ => {
            save_settings(&local, &config);
            let server = handle.block_on(bind(&local, config.listen, config.discovery))?;
            say(&format!(
                "boxsync box {} serving {} on {}; type 'help' for commands",
                local.id,
                local.share.root().display(),
                listening(&server)
            ));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let notices = server.notices();
            let serving = handle.spawn(server.run(wait_for(stopped.clone())));
            if let Some(sync) = unless_read_only(&local, config.sync) {
                let _guard = handle.enter();
                let peers = sync_peers(&session, &config.peers);
                session.set_sync(boxsync::sync::start(
                    Arc::clone(&local),
                    notices,
                    peers,
                    sync,
                    wait_for(stopped),
                ));
            }
            let result = repl::run_interactive(
                &handle,
                &mut session,
                shell_history(&local),
                config.ask_over,
            );
            let _ = stop.send(true);
            let _ = handle.block_on(serving);
            result.context("the shell failed")?;
            Ok(ScriptStatus::Succeeded)
        }
    }
}

/// Trusts, for this run, the boxes named by `--trust` and `--peer`.
fn apply_trust(local: &LocalBox, config: &Config) {
    for id in config
        .trust
        .iter()
        .chain(config.peers.iter().map(|p| &p.id))
    {
        local.trust.allow_for_this_run(id);
    }
}

/// Writes the settings this box starts with (its file, with the flags given over it) back
/// to `.boxsync/config.toml`, so that a start without flags resumes them. A box whose
/// settings cannot be written still starts; a note says why.
fn save_settings(local: &LocalBox, config: &Config) {
    let path = BoxConfig::path_in(&local.share.state_dir());
    if let Err(e) = config.saved.write_if_changed(&path) {
        output::print_error_line(&format!(
            "note: {}; the next start will not resume these settings",
            one_line(&anyhow::Error::new(e))
        ));
    }
}

/// `boxsync peers`: the box's peers as it would start, each with its address (or "by
/// ID"), transport, trust and name; the boxes trusted that are not peers; the listen
/// address and sync period.
fn peers_command(config: &Config, trust: &Trust) -> Result<()> {
    let listed = trust.list()?;
    let name_of = |id: &boxsync::types::BoxId| {
        listed
            .iter()
            .find(|t| t.id == *id)
            .and_then(|t| t.name.clone())
    };
    let kept = |id: &boxsync::types::BoxId| listed.iter().any(|t| t.id == *id && t.kept);
    let peers: Vec<serde_json::Value> = config
        .peers
        .iter()
        .map(|spec| {
            serde_json::json!({
                "id": spec.id,
                "addr": spec.addr,
                "transport": match spec.transport {
                    Transport::Tcp => "tcp",
                    Transport::Udp => "udp",
                },
                // A peer is trusted for the run at least (as -p does).
                "trust": if kept(&spec.id) { "kept" } else { "this run" },
                "name": name_of(&spec.id),
            })
        })
        .collect();
    let is_peer = |id: &boxsync::types::BoxId| config.peers.iter().any(|p| p.id == *id);
    let mut others: Vec<boxsync::trust::Trusted> =
        listed.iter().filter(|t| !is_peer(&t.id)).cloned().collect();
    for id in &config.trust {
        if !is_peer(id) && !others.iter().any(|t| t.id == *id) {
            others.push(boxsync::trust::Trusted {
                id: id.clone(),
                name: None,
                kept: false,
            });
        }
    }
    let listen = config.listen.map(|a| a.to_string());
    let period = config.sync.as_ref().map_or(0, |s| s.period.as_secs());
    if config.format == boxsync::shell::Format::Json {
        say(&serde_json::json!({
            "listen": listen,
            "sync": period,
            "config": config.config_file.display().to_string(),
            "peers": peers,
            "trusted": others,
        })
        .to_string());
        return Ok(());
    }
    let sync = if period == 0 {
        "sync off".to_string()
    } else {
        format!("sync every {period} s")
    };
    say(&format!(
        "listen {}, {sync} (settings: {})",
        listen.as_deref().unwrap_or("none"),
        boxsync::text::escape(&config.config_file.display().to_string())
    ));
    let shown = |name: Option<&str>| -> String {
        name.unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .collect()
    };
    for peer in &peers {
        say(format!(
            "peer     {}  {}  {}  trust: {}  {}",
            peer["id"].as_str().unwrap_or_default(),
            peer["addr"].as_str().unwrap_or("by ID"),
            peer["transport"].as_str().unwrap_or_default(),
            peer["trust"].as_str().unwrap_or_default(),
            shown(peer["name"].as_str()),
        )
        .trim_end());
    }
    for box_ in &others {
        let trust = if box_.kept { "kept" } else { "this run" };
        say(format!(
            "trusted  {}  may dial in  trust: {trust}  {}",
            box_.id,
            shown(box_.name.as_deref())
        )
        .trim_end());
    }
    if peers.is_empty() && others.is_empty() {
        say("no peers and no trusted boxes: `boxsync trust ID` adds one, -p ID@HOST:PORT a peer");
    }
    Ok(())
}

/// A read-only folder is served as it is: said in one line, and its sync does not run (it
/// would write to the folder); peers still copy from it.
fn unless_read_only(local: &LocalBox, sync: Option<SyncConfig>) -> Option<SyncConfig> {
    if !local.share.read_only() {
        return sync;
    }
    output::print_error_line(&format!(
        "note: {} is read-only: serving it as it is (peers copy from it; nothing is written to it, and sync does not run); its state is kept in {}",
        boxsync::text::escape(&local.share.root().display().to_string()),
        boxsync::text::escape(&local.share.state_dir().display().to_string())
    ));
    None
}

/// `boxsync id`, `trust`, `untrust` and `peers`: the box's identity and trust, without
/// opening its folder for sharing.
fn identity_command(config: &Config) -> Result<ScriptStatus> {
    let state = boxsync::share::state::existing(&config.dir);
    let json = config.format == boxsync::shell::Format::Json;
    match &config.run {
        Run::Id => {
            let identity = Identity::load_or_create(&state)?;
            if json {
                say(&serde_json::json!({ "id": identity.id() }).to_string());
            } else {
                say(identity.id().as_str());
            }
        }
        Run::Trust { id, name } => {
            let trust = Trust::open(&state)?;
            let new = trust.add(id, name.as_deref())?;
            let named = name
                .as_ref()
                .map(|n| format!(" as {n:?}"))
                .unwrap_or_default();
            if new {
                say(&format!(
                    "box {id} is trusted{named}: it may now connect to this box and sync with it"
                ));
            } else {
                say(&format!("box {id} was trusted already{named}"));
            }
        }
        Run::Untrust(id) => {
            let trust = Trust::open(&state)?;
            if trust.remove(id)? {
                say(&format!(
                    "box {id} is no longer trusted: its connections close at their next request"
                ));
            } else {
                say(&format!("box {id} was not trusted"));
            }
        }
        Run::Peers => peers_command(config, &Trust::open(&state)?)?,
        Run::Invite => {
            let identity = Identity::load_or_create(&state)?;
            let Some(listen) = config.listen else {
                bail!(
                    "a box started with -l none cannot invite: nobody can dial it; invite from the box it dials"
                );
            };
            let addr = invite_address(&state, listen);
            let invitation =
                boxsync::invite::create(&state, identity.id(), &addr, boxsync::invite::LIFETIME)?;
            say(&invitation.to_string());
            let serving = addr.parse::<SocketAddr>().is_ok_and(|a| {
                std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok()
            });
            if !serving {
                output::print_error_line(&format!(
                    "note: no box answers on {addr} now: start this box (boxsync serve -d {}) before the other box joins",
                    config.dir.display()
                ));
            }
            output::print_error_line(&format!(
                "valid once, for {} minutes, while this box serves on {addr}; on the other box run: boxsync join - -d DIR, and paste the line",
                boxsync::invite::LIFETIME.as_secs() / 60
            ));
        }
        _ => {}
    }
    Ok(ScriptStatus::Succeeded)
}

/// The address to put in an invitation: where this box's server last listened (its state
/// says), else `--listen`; a wildcard address becomes this machine's address on the
/// default route, which a box elsewhere can dial.
fn invite_address(state: &Path, listen: SocketAddr) -> String {
    let recorded = std::fs::read_to_string(state.join(boxsync::invite::LISTEN_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<SocketAddr>().ok());
    let mut addr = recorded.unwrap_or(listen);
    if addr.ip().is_unspecified() {
        // Connecting a UDP socket sends nothing; it only picks the outgoing address.
        let outgoing = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|socket| socket.connect("192.0.2.1:9").map(|()| socket))
            .and_then(|socket| socket.local_addr());
        if let Ok(outgoing) = outgoing {
            addr.set_ip(outgoing.ip());
        }
    }
    addr.to_string()
}

/// `boxsync join LINE`: dials the inviting box (its ID pinned) with the invitation's
/// secret; once it has let this box in, this box trusts it for good too.
fn join(
    handle: &Handle,
    config: &Config,
    invitation: &boxsync::invite::Invitation,
) -> Result<ScriptStatus> {
    let state = boxsync::share::state::existing(&config.dir);
    let identity = Identity::load_or_create(&state)?;
    let trust = Trust::open(&state)?;
    let inviter = &invitation.inviter;
    handle.block_on(async {
        let connect = tokio::net::TcpStream::connect(&inviter.addr);
        let stream = tokio::time::timeout(boxsync::peer::CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "box {} at {} did not answer within {:?}",
                    inviter.id,
                    inviter.addr,
                    boxsync::peer::CONNECT_TIMEOUT
                )
            })?
            .with_context(|| format!("cannot reach box {} at {}", inviter.id, inviter.addr))?;
        let dialed = boxsync::protocol::dial_session(
            stream,
            &identity,
            &inviter.id,
            Some(&invitation.secret),
            boxsync::protocol::Greeting::default(),
            None,
        )
        .await
        .with_context(|| format!("box {} at {}", inviter.id, inviter.addr))?;
        dialed.mux.close();
        anyhow::Ok(())
    })?;
    trust.add(&inviter.id, None)?;
    say(&format!(
        "joined box {}: the two boxes trust each other; sync with it: boxsync -d {} -p {inviter}",
        inviter.id,
        config.dir.display()
    ));
    Ok(ScriptStatus::Succeeded)
}

/// Prints one of the program's own lines (a banner, the serving address) on stdout. A
/// closed stdout is no reason to stop serving, so a failure is ignored here; the shell's
/// results, which a reader asked for, stop the program quietly when nobody reads them.
fn say(text: &str) {
    let _ = output::print_line(text);
}

/// The box the shell or script runs as. A script (`-c`, piped commands) that asks nothing
/// of the shared folder must not leave one behind: when no box lives in the folder yet (no
/// `.boxsync/`) and no `-c` command downloads, it runs as a throwaway box in a temporary
/// folder (a fresh id, this run's history only), returned with it to be removed at exit.
/// Such a script also runs beside a box running on the folder (which holds the folder's
/// lock), acting for it; anything else is refused there (one box per folder).
/// Piped commands are not known in advance, so they may download and open the folder.
fn open_client_box(config: &Config) -> Result<(Arc<LocalBox>, Option<tempfile::TempDir>)> {
    // Only the identity and trust (made by `boxsync id`, `trust`, or an earlier script)
    // do not make a folder a box yet.
    let identity_files = [
        boxsync::identity::KEY_FILE,
        boxsync::identity::ID_FILE,
        boxsync::trust::TRUST_FILE,
    ];
    let is_box =
        std::fs::read_dir(boxsync::share::state::existing(&config.dir)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| !identity_files.iter().any(|name| entry.file_name() == *name))
        });
    let reads_only = match &config.run {
        Run::Commands(lines) => !lines.iter().any(|line| {
            matches!(boxsync::shell::command::parse(line), Ok(Some(c)) if c.writes_locally())
        }),
        _ => false,
    };
    if is_box || !reads_only {
        match LocalBox::open_with(&config.dir, config.settings.clone()) {
            Ok(local) => return Ok((local, None)),
            // A box runs on the folder: a script that only reads runs beside it, as a
            // throwaway box acting for it; one that would write there is refused.
            Err(OpenError::Share(ShareError::Busy { .. })) if reads_only => {}
            Err(e) => return Err(e.into()),
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("boxsync-script-")
        .tempdir()
        .context("cannot create a temporary folder for the script's box")?;
    // The script acts as the folder's box (its peers trust that box's ID), so it borrows
    // the folder's identity, creating only the key if there is none yet. Without -d and
    // with no box in ./shared, it acts as this user's own client identity instead, kept
    // in the user's state folder, so that a query creates nothing where it runs.
    let state = boxsync::share::state::existing(&config.dir);
    let identity_dir = match config.dir_named || state.exists() {
        true => state,
        false => client_identity_dir()?,
    };
    let identity = Identity::load_or_create(&identity_dir)?;
    let local = LocalBox::open_as(
        scratch.path(),
        identity,
        Trust::in_memory(),
        config.settings.clone(),
    )?;
    Ok((local, Some(scratch)))
}

/// Where a script run without a box keeps this user's client identity:
/// `$XDG_STATE_HOME/boxsync/client`, or `~/.local/state/boxsync/client`.
fn client_identity_dir() -> Result<PathBuf> {
    let Some(state_home) = boxsync::share::state::user_state_home() else {
        bail!(
            "no box in ./shared, and neither XDG_STATE_HOME nor HOME is set to keep this user's client identity: give -d DIR"
        );
    };
    Ok(state_home.join("boxsync").join("client"))
}

/// Completes when `stop` turns true (or its sender is gone).
async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// The session's peer clients paired with the transport sync uses for each.
fn sync_peers(session: &Session, specs: &[PeerSpec]) -> Vec<(Arc<Peer>, Transport)> {
    session
        .peers()
        .iter()
        .zip(specs)
        .map(|(peer, spec)| (Arc::clone(peer), spec.transport))
        .collect()
}

/// The box's server on `listen`, or one that listens nowhere (`-l none`); with
/// `discovery`, local discovery too (announcing the port it listens on, if any). Call
/// within the runtime.
async fn bind(
    local: &Arc<LocalBox>,
    listen: Option<SocketAddr>,
    discovery: bool,
) -> Result<Server> {
    let server = match listen {
        Some(addr) => Server::bind(Arc::clone(local), addr).await?,
        None => Server::unlistening(Arc::clone(local)).await?,
    };
    if discovery {
        // Port 0: a box that listens nowhere looks for its peers but announces nothing.
        let port = if server.listens() {
            server.local_addr().port()
        } else {
            0
        };
        let config = boxsync::discovery::DiscoveryConfig::default();
        match boxsync::discovery::Discovery::start(config, local.id.clone(), port) {
            Ok(found) => local.links.set_discovery(Some(found)),
            Err(e) => {
                tracing::warn!(error = %e, "local discovery is off: peers given by ID alone are found only at the address they were last reached at")
            }
        }
    }
    Ok(server)
}

/// Where the box listens, for its banner.
fn listening(server: &Server) -> String {
    if server.listens() {
        server.local_addr().to_string()
    } else {
        "no port (-l none: it only dials out)".to_string()
    }
}

/// `boxsync serve`: the server (and sync, with peers) until SIGINT or SIGTERM.
async fn serve(
    local: Arc<LocalBox>,
    listen: Option<SocketAddr>,
    discovery: bool,
    peers: &[PeerSpec],
    sync: Option<SyncConfig>,
) -> Result<()> {
    let server = bind(&local, listen, discovery).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(sync) = sync {
        let peers = peers
            .iter()
            .map(|spec| (Arc::new(spec.client(Arc::clone(&local))), spec.transport))
            .collect();
        let notices = server.notices();
        boxsync::sync::start(Arc::clone(&local), notices, peers, sync, wait_for(stopped));
    }
    tracing::info!(
        addr = %server.local_addr(),
        dir = %local.share.root().display(),
        box_id = %local.id,
        "serving"
    );
    // Watched before the banner: a script that stops the box as soon as it has read the
    // line must not kill it before it can shut down cleanly.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch for SIGINT")?;
    // Scripts (and tests) started with port 0 read the bound address from this line.
    say(&format!(
        "boxsync box {} serving {} on {}",
        local.id,
        local.share.root().display(),
        listening(&server)
    ));
    server
        .run(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
        .await;
    let _ = stop.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// `boxsync demo`: two boxes in a temporary folder, the shell on the first.
fn demo(handle: &Handle, verbose: u8, ask_over: Option<usize>) -> Result<ScriptStatus> {
    let temp = tempfile::Builder::new()
        .prefix("boxsync-demo-")
        .tempdir()
        .context("cannot create the demo folder")?;
    let (dir_a, dir_b) = (temp.path().join("box-a"), temp.path().join("box-b"));
    boxsync::demo::populate(&dir_a, &dir_b).context("cannot write the demo files")?;
    let box_a = LocalBox::open(&dir_a)?;
    let box_b = LocalBox::open(&dir_b)?;
    box_b.trust.allow_for_this_run(&box_a.id);
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
    say(&format!(
        "boxsync demo: two boxes on this machine, in {}",
        temp.path().display()
    ));
    say(&format!(
        "  this box (A)  {}  serving {}",
        addr_a,
        dir_a.display()
    ));
    say(&format!(
        "  peer box (B)  {}  serving {}",
        addr_b,
        dir_b.display()
    ));
    say("");
    say("Try, in this order (Tab completes commands and box B's file names):");
    say("  index longlist                     what box B shares");
    say("  index glob '*.txt'                 only text files, at any depth");
    say("  hash verify hello.txt              MD5 and SHA-256 of a file on B");
    say("  download tcp mu<Tab><Tab>          completes \"music/song one.mp3\"; Enter");
    say("  download udp data/big.bin --max-rate 8M &");
    say("                                     a slow download in the background");
    say("  jobs                               its progress; 'kill 1' cancels it");
    say("  wait                               progress bars until it is done");
    say("  history                            what was asked and answered");
    say("  help                               everything else; Ctrl-D or quit to leave");
    say(
        "(Auto-sync is off in the demo so that you fetch by hand; the README shows two boxes\n kept in sync with --peer.)",
    );
    say("");
    let target_b = PeerAddress {
        id: box_b.id.clone(),
        addr: addr_b.to_string(),
    };
    let mut session = Session::new(Arc::clone(&box_a), &[target_b]);
    let result = repl::run_interactive(handle, &mut session, shell_history(&box_a), ask_over);
    let _ = stop.send(true);
    result.context("the shell failed")?;
    Ok(ScriptStatus::Succeeded)
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
