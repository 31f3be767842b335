#!/usr/bin/env python3
"""Auto-sync benchmark (issue 4), measured in one run on loopback:

1. sync latency: a file written on box A until the same bytes are on box B, with the
   rescan period at 10 s (so the watcher and change notices do the work);
2. initial sync of 10,000 small files, and of one 1 GiB file, from a full box to an empty
   one, against `rsync -a` of the same tree from an rsync daemon on loopback;
3. the CPU an idle pair of boxes with 10,000 files uses per minute.

    python3 bench/sync_bench.py [--files 10000] [--big-mib 1024] [--samples 20] [--idle 60]
                                [--repeat 5] [--parts latency,small,big,idle]
                                [--bin PATH [--bin PATH]] [--work DIR]

Installs rsync if it is missing (as root) and builds boxsync in release mode unless given --bin.
With two --bin (old first, new second), the initial syncs alternate rsync, the old and the
new build in every round (rsync first, the two builds' order flipping every round), and the
line gives the ratio new/old of the medians; latency and idle CPU run for each build in turn.

Issue 18's 10,000-file goal (the TLS build within 10% of today's, alternated), with the old
build made in /work/wt-old (see bench/tcp_download.sh) and the file system of
docs/benchmarks.md (Set-up) on /mnt/bench:

    python3 bench/sync_bench.py --parts small --repeat 10 --work /mnt/bench \
        --bin /work/wt-old/target/release/boxsync --bin target/release/boxsync

(goal: "new/old" <= 1.10). `python3 bench/sync_cpu.py OLD NEW --runs 10 --work /mnt/bench`
measures the same alternation with each box's CPU-seconds and the machine's steal.

Both forms of the command line work (bench/boxsync_cli.sh says more): a build with the `id`
subcommand (issue 18) gets `-p PEER_ID@127.0.0.1:PORT`, the peer's ID read with `BIN id -d
PEER_DIR` before the clock starts (each box's folder gets a new identity whenever its state
is wiped); an older build gets `-p 127.0.0.1:PORT`.
"""

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from procs import wait_until
from pathlib import Path

from need import need

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "boxsync"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FORMS = {}


def cli_form(binary=None):
    """'id' if the binary has the `id` subcommand (issue 18: box IDs, --peer ID@HOST:PORT),
    else 'old' (--peer HOST:PORT). Probed once per binary, in a scratch folder."""
    binary = str(binary or BIN)
    if binary not in FORMS:
        with tempfile.TemporaryDirectory(prefix="boxsync-probe-") as scratch:
            try:
                out = subprocess.run([binary, "id", "-d", os.path.join(scratch, "box")],
                                     capture_output=True, text=True, timeout=60)
            except OSError as e:
                sys.exit(f"bench: cannot run {binary}: {e}")
            lines = out.stdout.strip().splitlines()
            FORMS[binary] = "id" if out.returncode == 0 and len(lines) == 1 else "old"
    return FORMS[binary]


def describe(binary):
    if cli_form(binary) == "id":
        return f"{binary}: has 'id': ID form (--peer ID@HOST:PORT)"
    return f"{binary}: no 'id' subcommand: old form (--peer HOST:PORT)"


def box_id(folder):
    """The ID of the box in `folder` (created if it has none) for a build of the ID form;
    None for the old form. Call it before the clock starts, not while the box runs."""
    if cli_form() != "id":
        return None
    out = subprocess.run([str(BIN), "id", "-d", str(folder)], capture_output=True, text=True)
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 1:
        sys.exit(f"bench: '{BIN} id -d {folder}' did not print one ID: "
                 f"{out.stdout.strip()!r} {out.stderr.strip()}")
    return words[0]


def box_ids(*folders):
    return [box_id(f) for f in folders]


def start_box(folder, port, peer_port, period=10, peer_id=None):
    """A syncing box on `port` whose peer is on `peer_port`; `peer_id` (from box_id of the
    peer's folder) is required by, and only used for, a build of the ID form."""
    if cli_form() == "id" and not peer_id:
        sys.exit(f"bench: {BIN} takes box IDs: start_box needs the peer's (box_id)")
    peer = f"{peer_id}@127.0.0.1:{peer_port}" if cli_form() == "id" else f"127.0.0.1:{peer_port}"
    cmd = [str(BIN), "serve", "-d", str(folder), "-l", f"127.0.0.1:{port}",
           "-p", peer, "--sync", str(period)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if not proc.stdout.readline():  # "boxsync box ... serving ... on ..."
        sys.exit(f"bench: the box did not start: {' '.join(cmd)} (exit status {proc.wait()})")
    return proc


def stop(*procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def count_files(folder):
    n = 0
    for base, dirs, files in os.walk(folder):
        if ".boxsync" in dirs:
            dirs.remove(".boxsync")
        n += len(files)
    return n


def make_small_tree(folder, n, seed=1):
    rng = random.Random(seed)
    for i in range(n):
        d = folder / f"d{i % 50:02d}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(100, 4000)))


def rsync_daemon(module_path):
    port = free_port()
    conf = Path(tempfile.mkdtemp(prefix="rsyncd-")) / "rsyncd.conf"
    # As whoever runs the bench: a root daemon would drop to nobody, who cannot read a
    # private work folder.
    conf.write_text(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n[src]\n"
                    f"  path = {module_path}\n  read only = yes\n  exclude = .boxsync/\n")
    proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                             f"--port={port}", "--address=127.0.0.1"])
    wait_until(lambda: subprocess.run(["rsync", f"rsync://127.0.0.1:{port}/"],
                                      capture_output=True).returncode == 0, 10, 0.05)
    return proc, port


def settle_disk():
    """Writes out what earlier runs left dirty (the files of the last copy, the deletion of
    the one before), so that no run pays for another's write-back: boxsync makes each
    batch durable with `syncfs`, which would flush them too, while rsync flushes nothing."""
    os.sync()


def timed_rsync(port, dest):
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    settle_disk()
    t0 = time.monotonic()
    subprocess.run(["rsync", "-a", f"rsync://127.0.0.1:{port}/src/", f"{dest}/"], check=True)
    return time.monotonic() - t0


def arrived(targets):
    """A check that every (path, size) of `targets` is there with its size: a cursor in
    their order that stops at the first one missing, so each is looked at about once."""
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


def initial_sync(source, work, label, expected_files, expected_bytes):
    """Times a boxsync initial sync from a full box (cold caches) to an empty one: until
    every file is on the receiving box with its size (the content is compared after)."""
    shutil.rmtree(source / ".boxsync", ignore_errors=True)
    dest = work / f"dest-{label}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    # Walking 10,000 files every few milliseconds would cost the boxes being measured a
    # good part of a core (rsync pays nothing of the kind). Instead a cursor goes through
    # the expected files in name order and stops at the first one not there yet with its
    # size: each file is looked at about once in the whole run, whatever the order in
    # which they land. Its paths are made before the clock starts: building 10,000 path
    # objects during the run cost the harness 0.13 CPU-s on a machine the boxes saturate
    # (0.04 CPU-s with plain strings).
    expected = sorted((str(f.relative_to(source)), f.stat().st_size) for f in source.rglob("*")
                      if f.is_file() and ".boxsync" not in f.parts)
    if len(expected) != expected_files or sum(size for _, size in expected) != expected_bytes:
        sys.exit(f"{label}: the source tree is not what was made")
    targets = [(os.path.join(str(dest), name), size) for name, size in expected]
    pa, pb = free_port(), free_port()
    ida, idb = box_ids(source, dest)
    settle_disk()
    t0 = time.monotonic()
    a = start_box(source, pa, pb, peer_id=idb)
    b = start_box(dest, pb, pa, peer_id=ida)
    ok = wait_until(arrived(targets), 600, 0.002)
    elapsed = time.monotonic() - t0
    stop(a, b)
    if not ok:
        sys.exit(f"{label}: boxsync did not finish")
    diff = subprocess.run(["diff", "-r", "-x", ".boxsync", str(source), str(dest)], capture_output=True)
    if diff.returncode != 0:
        sys.exit(f"{label}: folders differ after sync:\n{diff.stdout[:2000]}")
    return elapsed


def alternate(source, work, label, files, size, repeat, bins):
    """Times rsync and each boxsync build on the same tree `repeat` times each, one after
    the other in every round, so that all see the same state of a machine whose speed
    drifts. Returns rsync's times and each build's (a list per build, in the order of
    `bins`, which may name one binary twice)."""
    global BIN
    rsd, rport = rsync_daemon(source)
    rsync_times, box_times = [], [[] for _ in bins]
    try:
        for r in range(repeat):
            rsync_times.append(timed_rsync(rport, work / f"rsync-{label}"))
            builds = list(zip(bins, box_times))
            if r % 2:
                builds.reverse()  # two builds: old first in odd rounds, new first in even
            for b, times in builds:
                BIN = b
                times.append(initial_sync(source, work, label, files, size))
    finally:
        stop(rsd)
    return rsync_times, box_times


def ratio_line(rsync_times, box_times):
    """The medians, their ratio, and every pair of runs."""
    r, b = statistics.median(rsync_times), statistics.median(box_times)
    runs = " ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(rsync_times, box_times))
    return (f"boxsync {b:.2f} s, rsync -a {r:.2f} s (medians), ratio rsync/boxsync {r/b:.2f}"
            f"   (target >= 1.0; each run rsync/boxsync: {runs})")


def sync_lines(head, rsync_times, box_times, bins):
    """One line per build (named when there are two), and the ratio new/old."""
    if len(bins) == 1:
        return [f"{head}: {ratio_line(rsync_times, box_times[0])}"]
    lines = [f"{head}:"]
    for name, b, times in zip(("old", "new"), bins, box_times):
        lines.append(f"     {name} {b}: {ratio_line(rsync_times, times)}")
    old, new = (statistics.median(times) for times in box_times)
    lines.append(f"     new/old {new / old:.3f} (median times; issue 18's goal <= 1.10; "
                 f"each run old/new: {' '.join(f'{x:.2f}/{y:.2f}' for x, y in zip(*box_times))})")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--idle", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs of rsync and of boxsync, alternated, per initial sync (medians)")
    ap.add_argument("--bin", type=Path, action="append", default=None,
                    help="boxsync binary to measure instead of building target/release/boxsync; "
                         "twice (old, then new) to alternate two builds")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder to work in (default: a new temporary folder); point it at a "
                         "freshly made file system for repeatable numbers (docs/benchmarks.md)")
    ap.add_argument("--parts", default="latency,small,big,idle",
                    help="comma-separated subset of latency,small,big,idle to run (default: all)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"latency", "small", "big", "idle"}
    if unknown:
        sys.exit(f"bench: unknown part(s): {', '.join(sorted(unknown))}")
    need("rsync")
    global BIN
    if args.bin is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        bins = [BIN]
    else:
        bins = [b.resolve() for b in args.bin]
    if len(bins) > 2:
        sys.exit("bench: at most two --bin (old, then new)")
    for b in bins:
        if not os.access(b, os.X_OK):
            sys.exit(f"bench: {b} is not an executable file")
        print(f"bench: {describe(b)}", file=sys.stderr)
    if "idle" in parts and "small" not in parts:
        sys.exit("bench: the idle part measures the pair synced by the small part; add small")
    work = Path(tempfile.mkdtemp(prefix="boxsync-syncbench-", dir=args.work))
    lines = [f"machine: {os.cpu_count()} cores; loopback; rescan period 10 s"]
    try:
        if "latency" in parts:
            for b in bins:
                BIN = b
                lines.append(measure_latency(work, args.samples)
                             + (f"   [{b}]" if len(bins) > 1 else ""))
        if "small" in parts:
            small = work / "small"
            make_small_tree(small, args.files)
            small_bytes = sum(f.stat().st_size for f in small.rglob("*") if f.is_file())
            rsync_small, box_small = alternate(
                small, work, "small", args.files, small_bytes, args.repeat, bins)
            lines += sync_lines(f"2. initial sync of {args.files} small files ({small_bytes/1e6:.1f} MB)",
                                rsync_small, box_small, bins)
        if "big" in parts:
            big = work / "big"
            big.mkdir()
            with open(big / "big.bin", "wb") as f:
                for _ in range(args.big_mib):
                    f.write(os.urandom(1 << 20))
            rsync_big, box_big = alternate(
                big, work, "big", 1, args.big_mib << 20, args.repeat, bins)
            lines += sync_lines(f"   initial sync of one {args.big_mib} MiB file", rsync_big, box_big, bins)
        if "idle" in parts:
            for b in bins:
                BIN = b
                if len(bins) > 1:
                    # The pair was synced last by the other build: sync it with this one.
                    initial_sync(work / "small", work, "small", args.files, small_bytes)
                lines.append(measure_idle(work / "small", work / "dest-small", args.files, args.idle)
                             + (f"   [{b}]" if len(bins) > 1 else ""))
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_latency(work, samples):
    """1. A 4 KiB file written on box A until the same bytes are on box B."""
    a_dir, b_dir = work / "lat-a", work / "lat-b"
    shutil.rmtree(a_dir, ignore_errors=True); shutil.rmtree(b_dir, ignore_errors=True)
    a_dir.mkdir(); b_dir.mkdir()
    pa, pb = free_port(), free_port()
    ida, idb = box_ids(a_dir, b_dir)
    a, b = start_box(a_dir, pa, pb, peer_id=idb), start_box(b_dir, pb, pa, peer_id=ida)
    time.sleep(1)  # let both finish their first (empty) round
    latencies = []
    for i in range(samples):
        content = os.urandom(4096)
        t0 = time.monotonic()
        (a_dir / f"sample{i}.bin").write_bytes(content)
        target = b_dir / f"sample{i}.bin"
        ok = wait_until(lambda: target.exists() and target.read_bytes() == content, 30, 0.002)
        if not ok:
            sys.exit(f"latency sample {i} never arrived")
        latencies.append(time.monotonic() - t0)
        time.sleep(0.5)
    stop(a, b)
    latencies.sort()
    median = statistics.median(latencies)
    p90 = latencies[int(len(latencies) * 0.9) - 1]
    return (f"1. sync latency, {samples} samples of 4 KiB: median {median*1000:.0f} ms, "
            f"p90 {p90*1000:.0f} ms, max {latencies[-1]*1000:.0f} ms   (target: median < 1 s)")


def measure_idle(small, dest, files, idle):
    """3. CPU an idle, synced pair of boxes with the small tree uses."""
    pa, pb = free_port(), free_port()
    ida, idb = box_ids(small, dest)
    a, b = start_box(small, pa, pb, peer_id=idb), start_box(dest, pb, pa, peer_id=ida)
    time.sleep(15)  # first rounds: caches warm, records written
    c0 = cpu_seconds(a.pid) + cpu_seconds(b.pid)
    time.sleep(idle)
    c1 = cpu_seconds(a.pid) + cpu_seconds(b.pid)
    stop(a, b)
    idle_share = (c1 - c0) / idle / 2 * 100  # per box, % of one core
    return (f"3. idle pair with {files} files: {(c1-c0):.2f} CPU s in {idle} s for two boxes = "
            f"{idle_share:.2f}% of one core per box   (target < 1%)")


if __name__ == "__main__":
    main()
