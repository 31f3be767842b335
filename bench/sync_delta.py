#!/usr/bin/env python3
"""Delta through sync (issue 21): what a change to a big file costs two syncing boxes on
loopback, until the peer holds it, against rsync (daemon, same machine, same run).

    python3 bench/sync_delta.py [--bin NEW] [--size-mib 1024] [--runs 2] [--work DIR]

Two boxes (`serve --sync 10`, each the other's peer) share one file of SIZE random bytes.
Each run changes box A's copy and times until box B holds it; rsync then makes the same
change from a copy of A's folder into a copy of B's (`rsync -a`, and `rsync -a --fsync`,
which flushes as boxsync does):

  rename        the file renamed into a new folder; done when B has the new name with the
                old content and the old name is gone (rsync: --fuzzy --delete-after)
  edit middle   1 MiB overwritten at SIZE/2; done when B's file is the new content

Each rsync run starts from the same destination (a hard-linked snapshot: rsync replaces
files, it does not write into them). Bytes on the wire are bench/delta.py's and
bench/delta.sh's business; this one is about the time until the peer holds the change.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from need import need  # noqa: E402
from procs import free_port, spawn, stop, wait_until  # noqa: E402

MIB = 1 << 20


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


def same(a, b):
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def start(binary, folder, port, peer_id, peer_port, log):
    cmd = [str(binary), "serve", "-d", str(folder), "-l", f"127.0.0.1:{port}",
           "-p", f"{peer_id}@127.0.0.1:{peer_port}", "--sync", "10", "--no-discovery"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    if "serving" not in proc.stdout.readline():
        sys.exit(f"bench: {' '.join(cmd)} did not start")
    return proc


def references(rport, rb, extra):
    """rsync's time for the change, plain and with --fsync, each from the same destination
    (a hard-linked snapshot of it); leaves the destination changed."""
    snap = rb.parent / "rsync-snapshot"
    shutil.rmtree(snap, ignore_errors=True)
    run(["cp", "-al", str(rb), str(snap)])
    refs = {}
    for tag, flags in (("rsync -a", []), ("rsync -a --fsync", ["--fsync"])):
        shutil.rmtree(rb)
        run(["cp", "-al", str(snap), str(rb)])
        run(["sync"])
        started = time.monotonic()
        run(["rsync", "-a", "--delete", *extra, *flags, f"rsync://127.0.0.1:{rport}/src/", f"{rb}/"])
        refs[tag] = time.monotonic() - started
    shutil.rmtree(snap)
    return refs


def timed(change, done, timeout=600):
    started = time.monotonic()
    change()
    if not wait_until(done, timeout, 0.005):
        sys.exit("bench: the change never arrived")
    return time.monotonic() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", type=Path, default=None)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    need("rsync", "rsync")
    root = Path(__file__).resolve().parent.parent
    binary = a.bin or root / "target/release/boxsync"
    if a.bin is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
    size = a.size_mib * MIB
    base = a.work or (Path("/mnt/bench") if os.path.ismount("/mnt/bench") else None)
    work = Path(tempfile.mkdtemp(prefix="sync-delta-", dir=base))
    rows = []
    try:
        fa, fb = work / "a", work / "b"
        ra, rb = work / "rsync-a", work / "rsync-b"
        for d in (fa, fb, ra, rb):
            d.mkdir()
        ida = run([str(binary), "id", "-d", str(fa)]).stdout.strip()
        idb = run([str(binary), "id", "-d", str(fb)]).stdout.strip()
        with open(fa / "big.bin", "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(MIB))
        shutil.copy2(fa / "big.bin", ra / "big.bin")
        run(["rsync", "-a", f"{ra}/", f"{rb}/"])
        conf = work / "rsyncd.conf"
        conf.write_text(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                        f"[src]\npath = {ra}\nread only = yes\n")
        rport = free_port()
        rsyncd = spawn(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={rport}",
                        "--address=127.0.0.1"])
        time.sleep(0.5)
        pa, pb = free_port(), free_port()
        log = open(work / "boxes.log", "w")
        box_a = start(binary, fa, pa, idb, pb, log)
        box_b = start(binary, fb, pb, ida, pa, log)
        first = timed(lambda: None, lambda: (fb / "big.bin").exists()
                      and (fb / "big.bin").stat().st_size == size, 900)
        assert same(fa / "big.bin", fb / "big.bin")
        print(f"first copy: {first:.2f} s", flush=True)
        name = "big.bin"
        for i in range(a.runs):
            # Rename into a new folder.
            new = f"moved-{i}/renamed.bin"
            (fa / f"moved-{i}").mkdir()
            t = timed(lambda: os.rename(fa / name, fa / new),
                      lambda: (fb / new).exists() and (fb / new).stat().st_size == size
                      and not (fb / name).exists())
            assert same(fa / new, fb / new), "renamed copy differs"
            (ra / f"moved-{i}").mkdir()
            os.rename(ra / name, ra / new)
            refs = references(rport, rb, ["--fuzzy", "--delete-after"])
            rows.append((f"rename into a new folder, run {i + 1}", t, refs))
            print(f"rename {i + 1}: boxsync {t:.2f} s; {refs}", flush=True)
            name = new
            # 1 MiB overwritten in the middle.
            patch = os.urandom(MIB)
            before = (fb / name).stat().st_ino

            def overwrite(folder):
                with open(folder / name, "r+b") as f:
                    f.seek(size // 2)
                    f.write(patch)

            def arrived():
                try:
                    return (fb / name).stat().st_ino != before
                except FileNotFoundError:
                    return False

            t = timed(lambda: overwrite(fa), arrived)
            assert same(fa / name, fb / name), "edited copy differs"
            overwrite(ra)
            refs = references(rport, rb, [])
            rows.append((f"1 MiB overwritten in the middle, run {i + 1}", t, refs))
            print(f"edit {i + 1}: boxsync {t:.2f} s; {refs}", flush=True)
        stop(box_a, box_b, rsyncd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nmachine: {os.cpu_count()} cores ({cpu}); commit {commit}; file {a.size_mib} MiB; loopback\n")
    print("| change | boxsync sync, until on the peer | rsync -a | rsync -a --fsync | boxsync / rsync --fsync |")
    print("|---|---|---|---|---|")
    for label, t, refs in rows:
        r, rf = refs["rsync -a"], refs["rsync -a --fsync"]
        print(f"| {label} | {t:.2f} s | {r:.2f} s | {rf:.2f} s | {t / rf:.2f} |")


if __name__ == "__main__":
    main()
