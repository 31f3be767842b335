#!/usr/bin/env python3
"""Where the CPU of a small-file initial sync goes, against rsync in the same run.

Alternates `rsync -a` from a daemon and each given boxsync binary on the same tree of small
files (bench/sync_bench.py's), and prints per binary the median wall time, the whole
machine's busy, idle and stolen CPU-seconds during the run (from /proc/stat), and each
box's own CPU-seconds (from /proc/PID/stat). On a machine the two boxes saturate, only less
CPU makes the sync faster; this shows whether that is the case. Steal (a virtual machine's
CPUs lent to others by the host) says whether the run was disturbed from outside; each
box's own CPU-seconds are then the steadier comparison.

    python3 bench/sync_cpu.py BIN [BIN ...] [--runs 6] [--files 10000] [--work DIR]

Issue 18's 10,000-file goal (the TLS build within 10% of today's), old build first:

    python3 bench/sync_cpu.py /work/wt-old/target/release/boxsync target/release/boxsync \
        --runs 10 --work /mnt/bench

Each binary's command line is probed as in sync_bench.py: a build with the `id` subcommand
(issue 18) is given `-p PEER_ID@127.0.0.1:PORT`, an older one `-p 127.0.0.1:PORT`.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sync_bench as sb
from need import need


def machine_cpu():
    """Busy, idle (with iowait) and stolen CPU-seconds of the whole machine so far. Steal is
    time the hypervisor gave this machine's CPUs to others: a run with much of it was
    disturbed from outside (busy counts it too)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / ticks, idle / ticks, fields[7] / ticks


def since(start):
    now = machine_cpu()
    return tuple(n - s for n, s in zip(now, start))


def run_rsync(port, dest):
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()
    start, t0 = machine_cpu(), time.monotonic()
    subprocess.run(["rsync", "-a", f"rsync://127.0.0.1:{port}/src/", f"{dest}/"], check=True)
    return time.monotonic() - t0, since(start), 0.0, 0.0


def run_boxsync(binary, source, dest, expected):
    """As sync_bench.initial_sync, measuring CPU instead of comparing contents."""
    shutil.rmtree(source / ".boxsync", ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    targets = [(os.path.join(str(dest), name), size) for name, size in expected]
    pa, pb = sb.free_port(), sb.free_port()
    sb.BIN = Path(binary).resolve()
    ida, idb = sb.box_ids(source, dest)
    os.sync()
    start, t0 = machine_cpu(), time.monotonic()
    a = sb.start_box(source, pa, pb, peer_id=idb)
    b = sb.start_box(dest, pb, pa, peer_id=ida)
    ok = sb.wait_until(sb.arrived(targets), 600, 0.002)
    wall, cpu = time.monotonic() - t0, since(start)
    box_a, box_b = sb.cpu_seconds(a.pid), sb.cpu_seconds(b.pid)
    sb.stop(a, b)
    if not ok:
        raise SystemExit(f"{binary}: the sync did not finish")
    return wall, cpu, box_a, box_b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bins", nargs="+", type=Path, help="boxsync binaries to measure")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--work", type=Path, default=None,
                    help="folder to work in; a fresh file system gives repeatable numbers")
    args = ap.parse_args()
    need("rsync")
    for binary in args.bins:
        print(f"bench: {sb.describe(binary.resolve())}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="boxsync-synccpu-", dir=args.work))
    try:
        source = work / "small"
        sb.make_small_tree(source, args.files)
        expected = sorted((str(f.relative_to(source)), f.stat().st_size)
                          for f in source.rglob("*") if f.is_file() and ".boxsync" not in f.parts)
        daemon, port = sb.rsync_daemon(source)
        results = {"rsync": []}
        try:
            for _ in range(args.runs):
                results["rsync"].append(run_rsync(port, work / "rsync-dest"))
                for i, binary in enumerate(args.bins):
                    # A binary given twice (a smoke run, old = new) keeps two rows.
                    name = str(binary) if args.bins.count(binary) == 1 else f"#{i + 1} {binary}"
                    results.setdefault(name, []).append(
                        run_boxsync(binary, source, work / "dest", expected))
        finally:
            sb.stop(daemon)
        med = statistics.median
        for name, runs in results.items():
            print(f"{name:28} wall {med(r[0] for r in runs):.3f} s  "
                  f"machine busy {med(r[1][0] for r in runs):.2f} idle {med(r[1][1] for r in runs):.2f} "
                  f"steal {med(r[1][2] for r in runs):.2f} CPU-s  "
                  f"serving box {med(r[2] for r in runs):.2f} receiving box {med(r[3] for r in runs):.2f} CPU-s  "
                  f"| walls {' '.join(f'{r[0]:.2f}' for r in runs)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
