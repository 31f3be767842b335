//! Local discovery across a real network: two boxes in network namespaces of their own,
//! joined by a bridge, find each other by box ID alone (no address given) and sync.
//!
//! Needs root and `ip` (iproute2). Without them the test says why and passes without
//! running: it is the only test that needs a network of its own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::util::{binary, box_id, poll};

/// From B's start to a file reaching B: A's start-up announcement comes at once (B is
/// listening by then), B's next round dials; should that datagram be lost, the next
/// announcement comes 30 s later.
const DEADLINE: Duration = Duration::from_secs(45);

/// Runs `ip ARGS`; the error says the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "'ip {}' failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (the real user ID, from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Three network namespaces: a bridge in one, and a box's end of a veth pair in each of
/// the other two, on 10.99.N.0/24. Names carry this process's ID, so that runs do not
/// collide; dropping it deletes the namespaces, and with them the links in them.
struct Network {
    /// The namespaces made so far, deleted on drop.
    namespaces: Vec<String>,
    /// Box A's namespace.
    a: String,
    /// Box B's namespace.
    b: String,
}

impl Network {
    fn new() -> Result<Network, String> {
        let pid = std::process::id();
        let subnet = pid % 250 + 1;
        let mut net = Network {
            namespaces: Vec::new(),
            a: format!("bxs-a-{pid}"),
            b: format!("bxs-b-{pid}"),
        };
        let bridge = format!("bxs-br-{pid}");
        for ns in [bridge.clone(), net.a.clone(), net.b.clone()] {
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for (ns, host, port) in [(&net.a, 1, "a0"), (&net.b, 2, "b0")] {
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns",
                &bridge,
            ])?;
            ip(&["-n", &bridge, "link", "set", port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", port, "up"])?;
            let addr = format!("10.99.{subnet}.{host}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            // A route for 255.255.255.255, where the announcements go.
            ip(&["-n", ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(net)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A box running in a namespace, killed on drop (before the namespaces go: declare it
/// after the [`Network`]).
struct NamespacedBox {
    /// `ip netns exec`, which has become `boxsync serve`.
    child: Child,
    /// Its standard output, held open so that the box never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl NamespacedBox {
    /// Starts `boxsync serve -d DIR ARGS...` in `ns` and waits until it listens (its first
    /// line, by which time its discovery socket is bound too).
    fn start(ns: &str, dir: &Path, args: &[&str]) -> NamespacedBox {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary())
            .args(["serve", "-d"])
            .arg(dir)
            .args(["-l", "0.0.0.0:0", "--sync", "2"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start boxsync in a namespace");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("boxsync box "),
            "the box in {ns} did not start: {line:?}"
        );
        NamespacedBox {
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for NamespacedBox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn holds(path: &Path, content: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|c| c == content)
}

/// Box B, given only box A's ID, finds A by A's announcement on the bridge, dials it, and
/// the one session syncs both ways: a file written on A reaches B, one written on B
/// reaches A. B starts first, so that it hears A's start-up announcement.
#[test]
fn boxes_in_two_namespaces_find_each_other_by_id() {
    if !is_root() {
        eprintln!("skipped: discovery across namespaces needs root (ip netns)");
        return;
    }
    let network = match Network::new() {
        Ok(network) => network,
        Err(e) => {
            eprintln!("skipped: cannot make the namespaces: {e}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_id, b_id) = (box_id(&a_dir), box_id(&b_dir));
    let _b = NamespacedBox::start(&network.b, &b_dir, &["-p", &a_id]);
    let _a = NamespacedBox::start(&network.a, &a_dir, &["--trust", &b_id]);

    std::fs::write(a_dir.join("from-a.txt"), b"written on A").unwrap();
    assert!(
        poll(DEADLINE, || holds(
            &b_dir.join("from-a.txt"),
            b"written on A"
        )),
        "a file written on A did not reach B within {DEADLINE:?}"
    );
    std::fs::write(b_dir.join("from-b.txt"), b"written on B").unwrap();
    assert!(
        poll(Duration::from_secs(15), || holds(
            &a_dir.join("from-b.txt"),
            b"written on B"
        )),
        "a file written on B did not reach A within 15 s of the first sync"
    );
}
