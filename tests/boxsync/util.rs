//! Shared test support: temporary boxes on 127.0.0.1:0, independent hashing, file helpers.

#![allow(dead_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxsync::identity::Identity;
use boxsync::local::{Limits, LocalBox, Settings};
use boxsync::peer::{Peer, PeerError};
use boxsync::protocol::Link;
use boxsync::protocol::{self, Connection};
use boxsync::protocol::{ErrorKind, Response};
use boxsync::requests::notices::Notices;
use boxsync::server::Server;
use boxsync::share::RelPath;
use boxsync::sync::{self, SyncConfig, SyncHandle};
use boxsync::transfer::TransferError;
use boxsync::types::{PeerAddress, Transport};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A box with a running server, in a temporary folder that disappears with it.
pub struct TestBox {
    /// Keeps the temporary folder alive.
    pub temp: TempDir,
    /// The box.
    pub local: Arc<LocalBox>,
    /// Where its server listens.
    pub addr: SocketAddr,
    /// What its server learnt for sync.
    pub notices: Arc<Notices>,
    /// Asks the server to shut down gracefully.
    stop: Option<oneshot::Sender<()>>,
    /// The server task.
    task: Option<JoinHandle<()>>,
}

impl TestBox {
    /// A new box with an empty shared folder, serving on 127.0.0.1:0.
    pub async fn start() -> TestBox {
        let temp = tempfile::tempdir().expect("temporary folder");
        TestBox::start_in(temp).await
    }

    /// A box serving the shared folder `<temp>/shared`.
    pub async fn start_in(temp: TempDir) -> TestBox {
        TestBox::start_in_limited(temp, Limits::default()).await
    }

    /// A new box with an empty shared folder, serving on 127.0.0.1:0, with the deadlines
    /// and bounds `limits` (tests lower them to seconds).
    pub async fn start_limited(limits: Limits) -> TestBox {
        let temp = tempfile::tempdir().expect("temporary folder");
        TestBox::start_in_limited(temp, limits).await
    }

    /// A new box with an empty shared folder, serving on 127.0.0.1:0, with `settings` (a
    /// UDP rate cap, to make its downloads slow).
    pub async fn start_with(settings: Settings) -> TestBox {
        let temp = tempfile::tempdir().expect("temporary folder");
        let shared = temp.path().join("shared");
        let local = LocalBox::open_with(&shared, settings).expect("open box");
        let server = Server::bind(Arc::clone(&local), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = server.local_addr();
        TestBox::run(temp, local, server, addr)
    }

    /// A box serving the shared folder `<temp>/shared`, with `limits`.
    pub async fn start_in_limited(temp: TempDir, limits: Limits) -> TestBox {
        let shared = temp.path().join("shared");
        let local = LocalBox::open_limited(&shared, Settings::default(), limits).expect("open box");
        let server = Server::bind(Arc::clone(&local), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = server.local_addr();
        TestBox::run(temp, local, server, addr)
    }

    /// The box whose folder lives in `temp`, serving again on `addr`: a box that was
    /// stopped or killed, restarted by a test on its known address.
    pub async fn restart_at(temp: TempDir, addr: SocketAddr) -> TestBox {
        let local = LocalBox::open(&temp.path().join("shared")).expect("open box");
        // The freed port number can be taken meanwhile as the local end of another
        // test's outgoing connection, for as long as that connection lives: retry until
        // it is free again, within a deadline.
        let deadline = Instant::now() + Duration::from_secs(30);
        let server = loop {
            match boxsync::server::Server::bind(Arc::clone(&local), addr).await {
                Ok(server) => break server,
                Err(boxsync::server::ServerError::Bind { cause, .. })
                    if cause.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind the old address {addr}: {e}"),
            }
        };
        let notices = server.notices();
        let task = tokio::spawn(server.run(std::future::pending()));
        TestBox {
            temp,
            local,
            addr,
            notices,
            stop: None,
            task: Some(task),
        }
    }

    /// A box whose server listens nowhere (`-l none`, a laptop behind NAT): it serves its
    /// peers only over the sessions it dials. `addr` is a placeholder nobody can dial.
    pub async fn start_unlistening() -> TestBox {
        let temp = tempfile::tempdir().expect("temporary folder");
        TestBox::restart_unlistening(temp).await
    }

    /// The unlistening box whose folder lives in `temp`, started (again).
    pub async fn restart_unlistening(temp: TempDir) -> TestBox {
        let shared = temp.path().join("shared");
        let local = LocalBox::open(&shared).expect("open box");
        let server = Server::unlistening(Arc::clone(&local))
            .await
            .expect("server");
        TestBox::run(temp, local, server, "127.0.0.1:1".parse().unwrap())
    }

    /// Runs `server` for `local` until [`TestBox::stop`] or [`TestBox::kill`].
    fn run(temp: TempDir, local: Arc<LocalBox>, server: Server, addr: SocketAddr) -> TestBox {
        let notices = server.notices();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestBox {
            temp,
            local,
            addr,
            notices,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A second box with its own folder, not serving (a client only).
    pub fn client() -> (TempDir, Arc<LocalBox>) {
        let temp = tempfile::tempdir().expect("temporary folder");
        let local = LocalBox::open(&temp.path().join("shared")).expect("open box");
        (temp, local)
    }

    /// The shared folder.
    pub fn root(&self) -> PathBuf {
        self.local.share.root().to_path_buf()
    }

    /// Writes a file (creating folders) in the shared folder.
    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        write_file(&self.root(), rel, content)
    }

    /// Where this box is, and which box it is: what a client dials.
    pub fn target(&self) -> PeerAddress {
        self.target_at(self.addr)
    }

    /// This box's ID at another address (a relay in front of it).
    pub fn target_at(&self, addr: SocketAddr) -> PeerAddress {
        PeerAddress {
            id: self.local.id.clone(),
            addr: addr.to_string(),
        }
    }

    /// The `--peer` value with which `boxsync -d dir` reaches this box, which trusts that
    /// box (its key is created in `dir` now, as `boxsync id -d dir` would).
    pub fn cli_target(&self, dir: &Path) -> String {
        let identity = Identity::load_or_create(&dir.join(boxsync::share::STATE_DIR)).unwrap();
        self.local.trust.allow_for_this_run(identity.id());
        self.target().to_string()
    }

    /// Makes this box trust `other` for good (kept across a restart of this box).
    pub fn trust(&self, other: &TestBox) {
        self.local.trust.add(&other.local.id, None).unwrap();
    }

    /// A client of this box, acting for `local`, which this box trusts.
    pub fn peer_for(&self, local: &Arc<LocalBox>) -> Peer {
        self.peer_via(local, self.addr)
    }

    /// A client of this box reached at `addr` (a relay in front of it), acting for
    /// `local`, which this box trusts.
    pub fn peer_via(&self, local: &Arc<LocalBox>, addr: SocketAddr) -> Peer {
        self.local.trust.allow_for_this_run(&local.id);
        Peer::new(&self.target_at(addr), Arc::clone(local))
    }

    /// Kills the server abruptly: every connection drops mid-request.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Writes `content` at `rel` under `root`, creating folders.
pub fn write_file(root: &Path, rel: &str, content: &[u8]) -> PathBuf {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create folders");
    }
    fs::write(&path, content).expect("write file");
    path
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// `(md5, sha256)` of a file, computed by coreutils: independent of boxsync's code.
pub fn coreutils_hashes(path: &Path) -> (String, String) {
    let run = |tool: &str| {
        let out = Command::new(tool)
            .arg(path)
            .output()
            .expect("run coreutils");
        assert!(out.status.success(), "{tool} failed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    (run("md5sum"), run("sha256sum"))
}

/// Files (not folders) under `dir`, recursively, relative.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(items) = fs::read_dir(&d) else {
            continue;
        };
        for item in items.flatten() {
            let path = item.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// Polls `condition` every 20 ms until it holds or `deadline` passes; whether it held.
/// For threads outside the async runtime (a pseudo-terminal, a child process); async
/// tests use [`eventually`].
pub fn poll(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// The path of the built `boxsync` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_boxsync"))
}

/// The ID of the box in `dir`, as `boxsync id` prints it (its identity made if new).
pub fn box_id(dir: &Path) -> String {
    let out = std::process::Command::new(binary())
        .args(["id", "-d"])
        .arg(dir)
        .output()
        .expect("run boxsync id");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `text` as rexpect sees it on a pseudo-terminal: it turns each byte into one `char`, so a
/// needle with non-ASCII characters (`✓`) must be spelled byte by byte to match.
pub fn as_pty_bytes(text: &str) -> String {
    text.bytes().map(char::from).collect()
}

/// A scripted peer, for tests of broken or lying answers: listens on a free loopback port
/// and, once a client connects, completes the handshake (TLS with a key of its own, then
/// the greetings, trusting any caller) and hands the first stream the client opens on the
/// session to `script`. Returns where
/// to dial it and the script's task.
pub async fn scripted_peer<Script, Run>(script: Script) -> (PeerAddress, JoinHandle<()>)
where
    Script: FnOnce(Connection<Link>) -> Run + Send + 'static,
    Run: std::future::Future<Output = ()> + Send + 'static,
{
    scripted_peer_streams(move |mut opened| async move {
        if let Some(link) = opened.recv().await {
            script(Connection::new(link)).await;
        }
    })
    .await
}

/// [`scripted_peer`] for exchanges of several requests: `script` gets every stream the
/// client opens on the session, as it opens them.
pub async fn scripted_peer_streams<Script, Run>(script: Script) -> (PeerAddress, JoinHandle<()>)
where
    Script: FnOnce(tokio::sync::mpsc::Receiver<Link>) -> Run + Send + 'static,
    Run: std::future::Future<Output = ()> + Send + 'static,
{
    let identity = Identity::generate().unwrap();
    let config = protocol::tls::server_config(&identity).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = PeerAddress {
        id: identity.id().clone(),
        addr: listener.local_addr().unwrap().to_string(),
    };
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let caller = protocol::accept(stream, config).await.unwrap();
        let (streams, opened) = tokio::sync::mpsc::channel(8);
        let _session = protocol::welcome(caller, protocol::Greeting::default(), Some(streams))
            .await
            .unwrap();
        script(opened).await;
    });
    (target, task)
}

/// The honest answer to a `blocks` request for `content` named `name`: what a scripted
/// peer sends before the download it means to test.
pub fn blocks_answer(name: &str, content: &[u8]) -> Response {
    use boxsync::share::blocks::{BlockHasher, block_size};
    let mut hasher = BlockHasher::new(content.len() as u64);
    hasher.update(content);
    let list = hasher.finish().expect("all bytes fed");
    Response::Blocks(boxsync::requests::blocks::BlocksAnswer {
        name: rel(name),
        size: content.len() as u64,
        mtime: boxsync::time::Timestamp::now(),
        mode: 0o644,
        blake3: blake3::hash(content).to_hex().to_string(),
        block_size: block_size(content.len() as u64),
        hashes: Some(list.hex()),
    })
}

/// A scripted peer for one download of `name`: answers its `blocks` request honestly for
/// `content`, then hands the stream of the download that follows to `script`.
pub async fn scripted_download<Script, Run>(
    name: &'static str,
    content: Vec<u8>,
    script: Script,
) -> (PeerAddress, JoinHandle<()>)
where
    Script: FnOnce(Connection<Link>) -> Run + Send + 'static,
    Run: std::future::Future<Output = ()> + Send + 'static,
{
    scripted_peer_streams(move |mut streams| async move {
        let Some(first) = streams.recv().await else {
            return;
        };
        let mut first = Connection::new(first);
        let Ok(boxsync::requests::Request::Blocks(_)) = first.expect_message().await else {
            panic!("a download begins with `blocks`");
        };
        first
            .write_message(&blocks_answer(name, &content))
            .await
            .unwrap();
        if let Some(second) = streams.recv().await {
            script(Connection::new(second)).await;
        }
    })
    .await
}

/// Connects to `b` as a client box that `b` trusts and completes the handshake: the way
/// tests speak the protocol by hand (hostile or hand-made requests).
pub async fn dial(b: &TestBox) -> Connection<Link> {
    let identity = Identity::generate().unwrap();
    b.local.trust.allow_for_this_run(identity.id());
    dial_as(b, &identity).await.unwrap()
}

/// Connects to `b` as `identity` (trusted or not) and attempts the handshake.
pub async fn dial_as(
    b: &TestBox,
    identity: &Identity,
) -> Result<Connection<Link>, protocol::HandshakeError> {
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    protocol::dial(stream, identity, &b.local.id).await
}

/// A path relative to a shared folder, from a name the test knows is valid.
pub fn rel(name: &str) -> RelPath {
    RelPath::parse(name).expect("a valid relative path")
}

/// Whether `error` says the connection to the peer was lost (rather than an answer).
pub fn is_connection_lost(error: &PeerError) -> bool {
    matches!(
        error,
        PeerError::Connection { .. } | PeerError::Transfer(TransferError::Connection(_))
    )
}

/// Whether `error` is the peer's refusal of a file that changed while it was read.
pub fn is_changed_on_peer(error: &PeerError) -> bool {
    matches!(
        error,
        PeerError::Transfer(TransferError::Remote {
            kind: ErrorKind::Changed,
            ..
        })
    )
}

pub fn start_sync(
    b: &TestBox,
    peers: &[PeerAddress],
    transport: Transport,
) -> (SyncHandle, watch::Sender<bool>) {
    start_sync_every(b, peers, transport, Duration::from_secs(1))
}

/// [`start_sync`] with another rescan period.
pub fn start_sync_every(
    b: &TestBox,
    peers: &[PeerAddress],
    transport: Transport,
    period: Duration,
) -> (SyncHandle, watch::Sender<bool>) {
    let (stop, mut stopped) = watch::channel(false);
    let peers = peers
        .iter()
        .map(|target| (Arc::new(Peer::new(target, Arc::clone(&b.local))), transport))
        .collect();
    // The rescan an hour away, as by default: between rescans, what the watcher reports
    // is all a round reads.
    let config = SyncConfig {
        period,
        rescan: Duration::from_secs(3600),
        trash_retention: Duration::from_secs(30 * 86_400),
    };
    let notices = Arc::clone(&b.notices);
    let handle = sync::start(Arc::clone(&b.local), notices, peers, config, async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    (handle, stop)
}

/// A person making seeded random changes to folders: creates, edits, deletes and renames
/// of files under `d0/`..`d2/`, each written content unique. It keeps what it wrote, and
/// what it overwrote or deleted itself (a person's own choice, not sync's), so that a test
/// can tell whether sync lost anything.
pub struct Person {
    rng: u64,
    serial: u64,
    /// Every content written.
    pub written: std::collections::BTreeSet<Vec<u8>>,
    /// Contents this person overwrote or deleted.
    pub discarded: std::collections::BTreeSet<Vec<u8>>,
}

impl Person {
    /// A person whose choices follow `seed`.
    pub fn new(seed: u64) -> Person {
        Person {
            rng: seed.max(1),
            serial: 0,
            written: Default::default(),
            discarded: Default::default(),
        }
    }

    /// A pseudo-random number below `n` (xorshift).
    pub fn next(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    /// One random change to the folder at `root` (box `label`): a new file, an edit, a
    /// deletion or a rename, in equal parts (a new file when there is none).
    pub fn change(&mut self, root: &Path, label: usize) {
        self.serial += 1;
        let existing: Vec<PathBuf> = files_under(root)
            .into_iter()
            .filter(|p| !p.starts_with(".boxsync"))
            .collect();
        let content = format!("box {label} write {}", self.serial).into_bytes();
        let choice = self.next(4);
        let mut victim = || root.join(&existing[self.next(existing.len() as u64) as usize]);
        match choice {
            _ if existing.is_empty() => self.write(root, content),
            0 => self.write(root, content),
            1 => {
                let path = victim();
                self.discard(&path);
                if let Some(parent) = path.parent() {
                    let _ = fs::create_dir_all(parent);
                }
                let _ = fs::write(&path, &content);
                self.written.insert(content);
            }
            2 => {
                let path = victim();
                self.discard(&path);
                let _ = fs::remove_file(&path);
            }
            _ => {
                let from = victim();
                let to = root.join(format!("d{}/r{}.txt", self.next(3), self.next(12)));
                self.discard(&to);
                let _ = fs::create_dir_all(to.parent().unwrap_or(root));
                let _ = fs::rename(from, to);
            }
        }
    }

    /// Writes `content` to a random new or existing name.
    fn write(&mut self, root: &Path, content: Vec<u8>) {
        let name = format!("d{}/f{}.txt", self.next(3), self.next(12));
        self.discard(&root.join(&name));
        write_file(root, &name, &content);
        self.written.insert(content);
    }

    /// What stands at `path` is the person's to lose.
    fn discard(&mut self, path: &Path) {
        if let Ok(old) = fs::read(path) {
            self.discarded.insert(old);
        }
    }

    /// The contents this person wrote and did not discard that are in none of `folders`
    /// and in no trash of theirs: what sync lost.
    pub fn lost(&self, folders: &[PathBuf]) -> Vec<String> {
        let mut surviving = std::collections::BTreeSet::new();
        for root in folders {
            let kept = |p: &PathBuf| !p.starts_with(".boxsync") || p.starts_with(".boxsync/trash");
            for file in files_under(root).into_iter().filter(kept) {
                if let Ok(content) = fs::read(root.join(file)) {
                    surviving.insert(content);
                }
            }
        }
        self.written
            .difference(&self.discarded)
            .filter(|c| !surviving.contains(*c))
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }
}
