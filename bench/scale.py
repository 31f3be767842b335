#!/usr/bin/env python3
"""Scale (issue 20): what N files cost a box. One tree of --files N files (200-2,000 random
bytes each, in N/100 folders; bench/scale_tree.py) is made once per run and reused by every
measure; on it, in one run, with references in the same run:

1. memory: VmRSS and VmHWM (/proc/PID/status) of both boxes, peak during the initial sync
   (VmHWM when the last file arrived) and at rest after convergence, per file; an empty
   box's RSS is measured too, so the per-file figure is given with and without it; the
   references' peak RSS (rsync, Unison: ru_maxrss from wait4, servers' VmHWM) alongside;
2. idle CPU of the converged pair over --idle seconds (utime+stime from /proc/PID/stat),
   per box, % of one core;
3. latency: a new 1 KiB file written on A until the same bytes are on B, --samples times;
4. initial sync of the N files into an empty box (both boxes' state wiped: A indexes the
   tree as it serves it), against `rsync -a` and `rsync -a --fsync` from an rsync daemon
   on loopback, and Unison 2.52 over its socket (`unison -socket PORT` and a client
   `unison SRC socket://127.0.0.1:PORT//DEST -batch -auto -times -silent`); rsync --fsync
   and Unison are stopped after --ref-timeout s and reported as slower than that; every
   destination is emptied, then `sync` and drop_caches (echo 3, as root) before its clock
   starts, for every tool alike;
5. restart of box A (knowing the N files; B stopped first) until it prints its 'serving'
   line and until it has answered one `index longlist`: warm (page cache as left) and cold
   (sync + drop_caches before);
6. `index longlist` of the N entries, `--json` and plain, the whole client command
   (`boxsync -d C -p A_ID@127.0.0.1:PORT [--json] -c 'index longlist' > FILE`), against
   `find A -printf '%p %s %T@\\n' > FILE` on the same tree; warm, after one untimed run
   of each, median of --list-runs alternated runs.

    python3 bench/scale.py [--files 100000] [--parts sync,memory,idle,latency,list,restart]
                           [--bin PATH [--bin PATH] | --old-bin OLD [--bin NEW]]
                           [--work DIR] [--keep] [--idle 60] [--samples 10] [--repeat 1]

Parts: `sync` is the references of 4 (boxsync's initial sync always runs: it makes the
converged pair the other parts measure); memory, idle, latency, list, restart as above.
Boxes: `serve -d DIR -l 127.0.0.1:PORT -p PEER_ID@127.0.0.1:PORT --sync 10
--no-discovery`, A with `--trust C_ID` for the listing client C. The tree itself is box A's
folder (its .boxsync/ is excluded from rsync, Unison and find, and removed before each
initial sync); no copy of it is made, so no hard links either. Latency files (A's
d00000/lat-*.bin) are removed when the session ends.

With two builds (--bin OLD --bin NEW, or --old-bin OLD and --bin NEW) each round runs the
references, then a whole session (all parts) of each build, their order flipping every
round, and prints new/old for the timed measures. Every process started here is killed on
exit. --work defaults to /mnt/bench if it is a mount point (docs/benchmarks.md, Set-up),
else /tmp. Steal (from /proc/stat) and the load average are printed with every measure.
"""

import argparse
import atexit
import grp
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from need import need
from procs import cpu_seconds, free_port, kill_all, on_signal, spawn, steal_seconds, stop, wait_until
from scale_tree import make_tree

ROOT = Path(__file__).resolve().parent.parent
def mem(pid):
    """(VmRSS, VmHWM) of `pid` in bytes."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


class Noise:
    """Steal and load over one measure."""

    def __init__(self):
        self.s0, self.t0 = steal_seconds(), time.monotonic()

    def __str__(self):
        load = Path("/proc/loadavg").read_text().split()[0]
        return (f"[steal {steal_seconds() - self.s0:.2f} CPU-s in {time.monotonic() - self.t0:.0f} s, "
                f"load {load}]")


DROP = os.geteuid() == 0


def cold():
    """Writes out what is dirty and, as root, empties the page cache, dentries and inodes."""
    os.sync()
    if DROP:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def mib(b):
    return f"{b / 2**20:.1f} MiB"


def med(xs):
    return statistics.median(xs)


# --- boxsync -----------------------------------------------------------------------------


def box_id(binary, folder):
    out = subprocess.run([str(binary), "id", "-d", str(folder)], capture_output=True, text=True)
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 1:
        sys.exit(f"bench: '{binary} id -d {folder}' did not print one ID: "
                 f"{out.stdout.strip()!r} {out.stderr.strip()}")
    return words[0]


def start_box(cmd, log):
    """Starts a box; returns (proc, seconds until its 'serving' line)."""
    t0 = time.monotonic()
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    t = time.monotonic() - t0
    if "serving" not in line:
        sys.exit(f"bench: the box did not start: {' '.join(cmd)} printed {line!r} "
                 f"(exit status {proc.poll()}); log {log.name}")
    return proc, t


def arrived(targets):
    """True once every (path, size) is there with its size; a cursor in name order, so
    each file is looked at about once (sync_bench.py's method)."""
    cursor = [0]

    def done():
        while cursor[0] < len(targets):
            path, size = targets[cursor[0]]
            try:
                if os.stat(path).st_size != size:
                    return False
            except FileNotFoundError:
                return False
            cursor[0] += 1
        return True

    return done


def same_bytes_sample(src, dst, entries, k=2000, seed=7):
    """Compares the bytes of `k` random files of the tree (a full diff of 1,000,000
    files would take longer than the sync)."""
    rng = random.Random(seed)
    for rel, _ in rng.sample(entries, min(k, len(entries))):
        if (src / rel).read_bytes() != (dst / rel).read_bytes():
            return rel
    return None


def holds(path, content):
    try:
        if os.stat(path).st_size != len(content):
            return False
        with open(path, "rb") as f:
            return f.read() == content
    except (FileNotFoundError, PermissionError):
        return False


def wait_quiet(pids, window, limit, timeout):
    """Waits until every pid used under `limit` of a core over `window` s; returns
    (quiet, seconds waited, last shares)."""
    t0 = time.monotonic()
    while True:
        c0 = [cpu_seconds(p) for p in pids]
        w0 = time.monotonic()
        time.sleep(window)
        w = time.monotonic() - w0
        shares = [(cpu_seconds(p) - c) / w for p, c in zip(pids, c0)]
        if all(s < limit for s in shares):
            return True, time.monotonic() - t0, shares
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0, shares


def timed_list(binary, client, peer, json_out, out_file):
    cmd = [str(binary), "-d", str(client), "-p", peer, "--no-discovery"]
    if json_out:
        cmd.append("--json")
    cmd += ["-c", "index longlist"]
    t0 = time.monotonic()
    with open(out_file, "wb") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE)
    t = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed: {r.stderr.decode()[-500:]}")
    data = Path(out_file).read_bytes()
    entries = data.count(b'"name":') if json_out else max(0, data.count(b"\n") - 1)
    return t, entries


def timed_find(src, out_file):
    t0 = time.monotonic()
    with open(out_file, "wb") as f:
        subprocess.run(["find", str(src), "-path", str(src / ".boxsync"), "-prune", "-o",
                        "-printf", "%p %s %T@\n"], stdout=f, check=True)
    t = time.monotonic() - t0
    return t, Path(out_file).read_bytes().count(b"\n")


# --- references -----------------------------------------------------------------------


def wait_child(proc):
    """Waits for `proc` with wait4: (seconds since `proc.t0`, peak RSS in bytes of it and
    the children it waited for)."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_maxrss * 1024


class References:
    def __init__(self, work, src, timeout):
        self.work, self.src, self.timeout = work, src, timeout
        conf = work / "rsyncd.conf"
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        conf.write_text(f"use chroot = no\nuid = {user}\ngid = {group}\n[src]\n  path = {src}\n"
                        f"  read only = yes\n  exclude = .boxsync/\n")
        self.port = free_port()
        self.rsyncd = spawn(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                             f"--port={self.port}", "--address=127.0.0.1"])
        if not wait_until(lambda: subprocess.run(["rsync", f"rsync://127.0.0.1:{self.port}/"],
                                                 capture_output=True).returncode == 0, 10, 0.05):
            sys.exit("bench: the rsync daemon did not start")

    def _dest(self, name):
        dest = self.work / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        return dest

    def rsync(self, extra, timed_out_ok=False):
        dest = self._dest("ref-rsync")
        cold()
        t0 = time.monotonic()
        p = spawn(["rsync", "-a", *extra, f"rsync://127.0.0.1:{self.port}/src/", f"{dest}/"])
        # rsync --fsync of a million files takes most of an hour: stopped at the timeout
        # (when there is one) and reported as not finished, like Unison.
        late = threading.Timer(self.timeout, p.kill) if timed_out_ok else None
        if late:
            late.start()
        peak = wait_child(p)
        t = time.monotonic() - t0
        stop(p)  # exited: only forgotten
        if late:
            late.cancel()
            if t >= self.timeout:
                shutil.rmtree(dest, ignore_errors=True)
                return None, None
        if p.returncode != 0:
            sys.exit(f"bench: rsync {extra} exited {p.returncode}")
        shutil.rmtree(dest, ignore_errors=True)
        return t, peak

    def unison(self):
        dest = self._dest("ref-unison")
        for d in ("unison-srv", "unison-cli"):
            shutil.rmtree(self.work / d, ignore_errors=True)
            (self.work / d).mkdir()
        port = free_port()
        log = open(self.work / "logs" / "unison-server.log", "w")
        srv = spawn(["unison", "-socket", str(port)], cwd=self.work, stdout=log, stderr=log,
                    env=dict(os.environ, UNISON=str(self.work / "unison-srv")))
        if not wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, 0.02):
            sys.exit("bench: the unison server did not listen")
        cold()
        t0 = time.monotonic()
        cli = spawn(["unison", str(self.src), f"socket://127.0.0.1:{port}/{dest}", "-batch",
                     "-auto", "-times", "-silent", "-ignore", "Name .boxsync"],
                    env=dict(os.environ, UNISON=str(self.work / "unison-cli")),
                    stdout=open(self.work / "logs" / "unison-client.log", "w"),
                    stderr=subprocess.STDOUT)
        try:
            cli.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            stop(cli, srv)
            shutil.rmtree(dest, ignore_errors=True)
            return None, None, None
        t = time.monotonic() - t0
        _, srv_peak = mem(srv.pid)
        stop(srv)
        stop(cli)  # exited: only forgotten
        # cli was reaped by wait(): its own peak is not available then; the server's is.
        if cli.returncode != 0:
            sys.exit(f"bench: unison exited {cli.returncode}; see logs/unison-client.log")
        shutil.rmtree(dest, ignore_errors=True)
        return t, srv_peak, None

    def close(self):
        stop(self.rsyncd)


# --- one build's session ------------------------------------------------------------------


def empty_box_rss(binary, work):
    d = work / "empty-box"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    proc, _ = start_box([str(binary), "serve", "-d", str(d), "-l", "127.0.0.1:0", "--sync", "10",
                         "--no-discovery"], open(work / "logs" / "empty-box.log", "w"))
    time.sleep(3)
    rss, _ = mem(proc.pid)
    stop(proc)
    return rss


def session(binary, work, src, entries, args, parts, tag):
    """Initial sync into an empty box, then the parts on the converged pair. Returns
    (report lines, {measure: seconds} for the new/old ratios)."""
    n = len(entries)
    lines, timed = [], {}
    logs = work / "logs"
    dst, client = work / "b", work / "c"
    shutil.rmtree(src / ".boxsync", ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(client, ignore_errors=True)
    dst.mkdir()
    base_rss = empty_box_rss(binary, work)
    ida, idb, idc = box_id(binary, src), box_id(binary, dst), box_id(binary, client)
    pa, pb = free_port(), free_port()
    common = ["--sync", "10", "--no-discovery"]
    cmd_a = [str(binary), "serve", "-d", str(src), "-l", f"127.0.0.1:{pa}",
             "-p", f"{idb}@127.0.0.1:{pb}", "--trust", idc, *common]
    cmd_b = [str(binary), "serve", "-d", str(dst), "-l", f"127.0.0.1:{pb}",
             "-p", f"{ida}@127.0.0.1:{pa}", *common]
    targets = [(os.path.join(str(dst), rel), size) for rel, size in entries]
    cold()
    noise = Noise()
    t0 = time.monotonic()
    a, _ = start_box(cmd_a, open(logs / f"a{tag}.log", "a"))
    b, _ = start_box(cmd_b, open(logs / f"b{tag}.log", "a"))
    ok = wait_until(arrived(targets), args.timeout, 0.002)
    t_sync = time.monotonic() - t0
    if not ok:
        sys.exit(f"bench: boxsync's initial sync did not finish in {args.timeout} s")
    (_, peak_a), (_, peak_b) = mem(a.pid), mem(b.pid)
    cpu_a, cpu_b = cpu_seconds(a.pid), cpu_seconds(b.pid)
    bad = same_bytes_sample(src, dst, entries)
    if bad:
        sys.exit(f"bench: {bad} differs after the sync")
    timed["sync"] = t_sync
    lines.append(f"4. initial sync, boxsync{tag}: {t_sync:.2f} s (every file there with its size; "
                 f"2,000 random files' bytes compared after); CPU A {cpu_a:.1f} s, B {cpu_b:.1f} s "
                 f"{noise}")
    # Converged: a quiet window of 10 s (the rescan period) for both, under 1% of a core
    # each, at most --settle s. (After a first sync of a million files the boxes pay each
    # other a million install confirmations, 100,000 a round, for about 100 s at 3-5%:
    # a looser bar measured that as "idle".)
    noise = Noise()
    quiet, waited, shares = wait_quiet([a.pid, b.pid], 10, 0.01, args.settle)
    (rss_a, hwm_a), (rss_b, hwm_b) = mem(a.pid), mem(b.pid)
    state = "quiet" if quiet else f"NOT quiet after {waited:.0f} s"
    if "memory" in parts:
        lines.append(
            f"1. memory, boxsync{tag}, {n} files: peak during the initial sync (VmHWM when the last "
            f"file arrived) A {mib(peak_a)} = {peak_a / n:.0f} B/file, B {mib(peak_b)} = "
            f"{peak_b / n:.0f} B/file; at rest ({state}, {waited:.0f} s after; last 10 s "
            f"A {shares[0] * 100:.1f}%, B {shares[1] * 100:.1f}% of a core) VmRSS A {mib(rss_a)} = "
            f"{rss_a / n:.0f} B/file, B {mib(rss_b)} = {rss_b / n:.0f} B/file (VmHWM now A "
            f"{mib(hwm_a)}, B {mib(hwm_b)}); an empty box {mib(base_rss)}, so over it A "
            f"{(rss_a - base_rss) / n:.0f}, B {(rss_b - base_rss) / n:.0f} B/file at rest, "
            f"peak A {(peak_a - base_rss) / n:.0f}, B {(peak_b - base_rss) / n:.0f} {noise}")
    if "idle" in parts:
        noise = Noise()
        c0, w0 = (cpu_seconds(a.pid), cpu_seconds(b.pid)), time.monotonic()
        time.sleep(args.idle)
        c1, w1 = (cpu_seconds(a.pid), cpu_seconds(b.pid)), time.monotonic()
        w = w1 - w0
        lines.append(f"2. idle CPU, boxsync{tag}, converged pair, {n} files, over {w:.0f} s "
                     f"(rescan period 10 s): A {(c1[0] - c0[0]) / w * 100:.2f}%, B "
                     f"{(c1[1] - c0[1]) / w * 100:.2f}% of one core ({c1[0] - c0[0]:.2f} / "
                     f"{c1[1] - c0[1]:.2f} CPU-s) {noise}")
    if "latency" in parts:
        noise = Noise()
        lat = []
        for i in range(args.samples):
            name = f"d00000/lat-{i}.bin"
            content = os.urandom(1024)
            t0 = time.monotonic()
            (src / name).write_bytes(content)
            if not wait_until(lambda: holds(dst / name, content), 60, 0.002):
                sys.exit(f"bench: latency sample {name} did not reach B in 60 s")
            lat.append(time.monotonic() - t0)
            time.sleep(args.gap)
        s = sorted(lat)
        timed["latency"] = med(s)
        lines.append(f"3. latency, boxsync{tag}, {n} files in the box, {len(s)} new 1 KiB files A -> B: "
                     f"median {med(s) * 1000:.0f} ms, min {s[0] * 1000:.0f}, max {s[-1] * 1000:.0f} "
                     f"ms {noise}")
    peer_a = f"{ida}@127.0.0.1:{pa}"
    if "list" in parts:
        noise = Noise()
        runs = {"json": [], "plain": [], "find": []}
        counts = {}
        for r in range(args.list_runs + 1):  # the first run of each warms, untimed
            order = ["json", "plain", "find"] if r % 2 == 0 else ["find", "plain", "json"]
            for k in order:
                out = work / f"list-{k}.txt"
                if k == "find":
                    t, c = timed_find(src, out)
                else:
                    t, c = timed_list(binary, client, peer_a, k == "json", out)
                counts[k] = c
                if r:
                    runs[k].append(t)
        f = med(runs["find"])
        for k in ("json", "plain"):
            timed[f"list-{k}"] = med(runs[k])
        if counts["json"] < n or counts["plain"] < n:
            lines.append(f"   WARNING: index longlist gave {counts['json']} (json) / {counts['plain']} "
                         f"(plain) entries for {n} files")
        lines.append(
            f"6. index longlist, boxsync{tag}, {counts['json']} entries (json): --json "
            f"{med(runs['json']):.2f} s, plain {med(runs['plain']):.2f} s; find -printf "
            f"{f:.2f} s ({counts['find']} lines); ratio find/boxsync json {f / med(runs['json']):.3f}, "
            f"plain {f / med(runs['plain']):.3f}   (warm, medians of {args.list_runs}; runs json "
            f"{' '.join(f'{x:.2f}' for x in runs['json'])}, plain "
            f"{' '.join(f'{x:.2f}' for x in runs['plain'])}, find "
            f"{' '.join(f'{x:.2f}' for x in runs['find'])}) {noise}")
    stop(b)
    if "restart" in parts:
        for label in ("warm", "cold"):
            stop(a)
            if label == "cold":
                cold()
            else:
                os.sync()
            noise = Noise()
            t0 = time.monotonic()
            a, t_serve = start_box(cmd_a, open(logs / f"a{tag}.log", "a"))
            t_list, c = timed_list(binary, client, peer_a, True, work / "list-restart.txt")
            t_total = time.monotonic() - t0
            rss, hwm = mem(a.pid)
            timed[f"restart-{label}"] = t_total
            lines.append(f"5. restart of A ({label}{', after sync + drop_caches' if label == 'cold' and DROP else ''}), "
                         f"boxsync{tag}, knows {n} files, B stopped: 'serving' after {t_serve:.2f} s, "
                         f"first index longlist ({c} entries) answered after {t_total:.2f} s "
                         f"(the listing itself {t_list:.2f} s); then VmRSS {mib(rss)}, VmHWM "
                         f"{mib(hwm)} {noise}")
    stop(a)
    for i in range(args.samples):
        try:
            (src / f"d00000/lat-{i}.bin").unlink()
        except FileNotFoundError:
            pass
    if not args.keep:
        shutil.rmtree(dst, ignore_errors=True)
    return lines, timed


# --- main ---------------------------------------------------------------------------------


def progress(lines, new):
    for line in new:
        print(line, file=sys.stderr, flush=True)
    lines.extend(new)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--parts", default="sync,memory,idle,latency,list,restart",
                    help="comma-separated: sync (the references),memory,idle,latency,list,restart")
    ap.add_argument("--bin", type=Path, action="append", default=None,
                    help="boxsync binary (default target/release/boxsync, built); twice: old, new")
    ap.add_argument("--old-bin", type=Path, default=None, help="an old build to alternate with --bin")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--idle", type=int, default=60, help="idle window, s")
    ap.add_argument("--samples", type=int, default=10, help="latency samples")
    ap.add_argument("--gap", type=float, default=1.0, help="s between latency samples")
    ap.add_argument("--list-runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="rounds (references + each build)")
    ap.add_argument("--settle", type=int, default=120,
                    help="at most this many s waiting for a quiet pair after the sync")
    ap.add_argument("--timeout", type=int, default=3600, help="boxsync initial sync deadline, s")
    ap.add_argument("--ref-timeout", type=int, default=600,
                    help="rsync --fsync and Unison are stopped after this many s and reported as slower")
    ap.add_argument("--refs", default="rsync,rsync-fsync,unison",
                    help="which references the sync part runs")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    known = {"sync", "memory", "idle", "latency", "list", "restart"}
    if parts - known:
        sys.exit(f"bench: unknown part(s): {', '.join(sorted(parts - known))}")
    refs = set(args.refs.split(",")) if args.refs else set()
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.bin is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        bins = [ROOT / "target" / "release" / "boxsync"]
    else:
        bins = [b.resolve() for b in args.bin]
    if args.old_bin:
        bins.insert(0, args.old_bin.resolve())
    if len(bins) > 2:
        sys.exit("bench: at most two builds (old, new)")
    for b in bins:
        if not os.access(b, os.X_OK):
            sys.exit(f"bench: {b} is not an executable file")
    if "sync" in parts:
        need("rsync")
        if "unison" in refs:
            need("unison")
    work_root = args.work
    if work_root is None:
        work_root = Path("/mnt/bench") if os.path.ismount("/mnt/bench") else Path("/tmp")
    work = Path(tempfile.mkdtemp(prefix="boxsync-scale-", dir=work_root))
    (work / "logs").mkdir()
    fs = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", str(work)],
                        capture_output=True, text=True).stdout.strip()
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "unknown")
    lines = [f"machine: {os.cpu_count()} cores ({model}); work in {work} ({fs}); drop_caches "
             f"{'yes' if DROP else 'no (not root): sync only'}; load {Path('/proc/loadavg').read_text().strip()}"]
    for i, b in enumerate(bins):
        lines.append(f"build {['old', 'new'][i] if len(bins) > 1 else ''} {b}")
    try:
        src = work / "a"
        noise = Noise()
        t0 = time.monotonic()
        entries = make_tree(src, args.files)
        os.sync()
        total = sum(s for _, s in entries)
        progress(lines, [f"tree: {len(entries)} files, {total / 1e6:.1f} MB in {(args.files + 99) // 100} "
                         f"folders, made in {time.monotonic() - t0:.1f} s (once; box A's folder) {noise}"])
        all_timed = [[] for _ in bins]
        for r in range(args.repeat):
            ref_times = {}
            ref_stopped = []
            if "sync" in parts and refs:
                ref = References(work, src, args.ref_timeout)
                try:
                    out = []

                    def took(name, how, t, whose, peak, noise):
                        """One reference's line; a timed-out one is a lower bound."""
                        if t is None:
                            out.append(f"4. initial sync, {name}: stopped after "
                                       f"{args.ref_timeout} s, not finished {noise}")
                            ref_stopped.append(name)
                        else:
                            out.append(f"4. initial sync, {name} {how}: {t:.2f} s, "
                                       f"{whose} peak RSS {mib(peak)} {noise}")
                            ref_times[name] = t

                    if "rsync" in refs:
                        noise = Noise()
                        t, peak = ref.rsync([])
                        took("rsync -a", "(daemon on loopback)", t, "client", peak, noise)
                    if "rsync-fsync" in refs:
                        noise = Noise()
                        t, peak = ref.rsync(["--fsync"], timed_out_ok=True)
                        took("rsync -a --fsync", "(daemon on loopback)", t, "client", peak, noise)
                    if "unison" in refs:
                        noise = Noise()
                        t, speak, _ = ref.unison()
                        took("unison", "-socket (loopback), -times", t, "server", speak, noise)
                    progress(lines, out)
                finally:
                    ref.close()
            order = list(enumerate(bins))
            if r % 2:
                order.reverse()
            for i, b in order:
                tag = f" [{['old', 'new'][i]}]" if len(bins) > 1 else ""
                new, timed = session(b, work, src, entries, args, parts, tag)
                progress(lines, new)
                all_timed[i].append(timed)
                if ref_times or ref_stopped:
                    progress(lines, [f"4. initial sync of {len(entries)} files, boxsync{tag} {timed['sync']:.2f} s; ratio "
                                     "reference/boxsync: " + ", ".join(
                                         [f"{k} {v:.2f} s = {v / timed['sync']:.2f}" for k, v in ref_times.items()]
                                         + [f"{k} > {args.ref_timeout} s = > {args.ref_timeout / timed['sync']:.2f}"
                                            for k in ref_stopped])])
        if len(bins) == 2:
            for k in all_timed[0][0]:
                old = med([t[k] for t in all_timed[0]])
                new = med([t[k] for t in all_timed[1]])
                progress(lines, [f"   new/old {k}: {new / old:.3f} ({old:.2f} s -> {new:.2f} s, medians)"])
        lines.append(f"end: load {Path('/proc/loadavg').read_text().strip()}")
        print("\n".join(lines))
    finally:
        kill_all()
        if args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
