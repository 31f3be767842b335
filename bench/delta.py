#!/usr/bin/env python3
"""Delta transfers (issue 21) on loopback: what a change to a big file costs boxsync's
`download tcp` and rsync (daemon, same machine, same run), in time and in bytes moved.

    python3 bench/delta.py [--bin NEW] [--old-bin OLD] [--size-mib 1024] [--work DIR]

For one file of SIZE random bytes, served by `boxsync serve` and by an rsync daemon from
the same folder, into two destination folders (one per tool) that hold the previous
version, each scenario changes the source, then times one download with each tool:

  first copy     into empty folders (with --old-bin: old and new builds alternated, twice)
  edit middle    1 MiB overwritten at SIZE/2
  append         1 MiB appended
  rename         the file renamed (rsync: --fuzzy, which takes the old name as its basis)
  insert start   10 bytes inserted at offset 100 (what a rolling match would save)
  resume         a download into an empty folder stopped at half the file (boxsync:
                 SIGKILL; rsync --partial: SIGINT, which it needs to keep its partial
                 file), then run again: bytes fetched in all / file size

Bytes: boxsync's `transferred` (file bytes over the network) from its JSON; rsync's
"Literal data" (file bytes sent) and "Total bytes received" (everything) from --stats.
Every copy is compared with the source after its clock stops.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from need import need  # noqa: E402
from procs import free_port, wait_until  # noqa: E402

MIB = 1 << 20


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


def allocated(path):
    total = 0
    for p in Path(path).rglob("*"):
        if p.is_file():
            total += p.stat().st_blocks * 512
    return total


def same(a, b):
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


class Box:
    """A serving boxsync box on loopback and a client folder that trusts it."""

    def __init__(self, binary, work, tag):
        self.bin = binary
        self.src = work / f"src-{tag}"
        self.src.mkdir()
        self.sid = run([binary, "id", "-d", str(self.src)]).stdout.strip()
        self.port = free_port()
        self.proc = None

    def client_id(self, dst):
        return run([self.bin, "id", "-d", str(dst)]).stdout.strip()

    def start(self, client_ids):
        args = [self.bin, "serve", "-d", str(self.src), "-l", f"127.0.0.1:{self.port}"]
        for cid in client_ids:
            args += ["--trust", cid]
        out = self.src.parent / f"serve-{self.port}.out"
        self.out = open(out, "w")
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: "serving" in out.read_text(), 30):
            sys.exit("bench: boxsync serve did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def download(self, dst, name):
        peer = f"{self.sid}@127.0.0.1:{self.port}"
        cmd = [self.bin, "-d", str(dst), "-p", peer, "--json", "-c", f"download tcp {name}"]
        started = time.monotonic()
        out = run(cmd).stdout
        seconds = time.monotonic() - started
        doc = json.loads(out.strip().splitlines()[-1])
        return seconds, doc.get("transferred", doc.get("size")), doc

    def download_killed_at(self, dst, name, fraction, size):
        peer = f"{self.sid}@127.0.0.1:{self.port}"
        cmd = [self.bin, "-d", str(dst), "-p", peer, "-c", f"download tcp {name}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parts = Path(dst) / ".boxsync/tmp/resume"
        wait_until(lambda: allocated(parts) >= fraction * size or proc.poll() is not None, 60, 0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return allocated(parts)


def rsync_stats(text):
    def number(label):
        m = re.search(label + r": ([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else 0

    return number("Literal data"), number("Total bytes received")


def rsync(port, name, dst, *extra):
    cmd = ["rsync", "-a", "--stats", *extra, f"rsync://127.0.0.1:{port}/src/{name}", f"{dst}/"]
    started = time.monotonic()
    out = run(cmd).stdout
    seconds = time.monotonic() - started
    literal, received = rsync_stats(out)
    return seconds, literal, received


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", type=Path, default=None)
    ap.add_argument("--old-bin", type=Path, default=None)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    need("rsync", "rsync")
    root = Path(__file__).resolve().parent.parent
    new = a.bin or root / "target/release/boxsync"
    if a.bin is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
    size = a.size_mib * MIB
    base = a.work or (Path("/mnt/bench") if os.path.ismount("/mnt/bench") else None)
    work = Path(tempfile.mkdtemp(prefix="boxsync-delta-", dir=base))
    rows = []
    try:
        box = Box(str(new), work, "new")
        data = box.src / "big.bin"
        with open(data, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(MIB))
        dst_box, dst_rsync = work / "dst-box", work / "dst-rsync"
        dst_rsync.mkdir()
        clients = [box.client_id(dst_box), box.client_id(work / "dst-resume")]
        clients += [box.client_id(work / f"dst-new-{i}") for i in range(2)]
        old = None
        if a.old_bin:
            old = Box(str(a.old_bin), work, "old")
            os.link(data, old.src / "big.bin")
            clients_old = [old.client_id(work / f"dst-old-{i}") for i in range(2)]
            old.start(clients_old)
        box.start(clients)
        conf = work / "rsyncd.conf"
        conf.write_text(
            f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
            f"[src]\n  path = {box.src}\n  read only = yes\n  exclude = .boxsync/\n"
        )
        rport = free_port()
        rsyncd = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={rport}", "--address=127.0.0.1"]
        )
        time.sleep(0.5)

        def measure(label, name, *rsync_extra):
            t_box, moved_box, _ = box.download(dst_box, name)
            assert same(box.src / name, dst_box / name), f"{label}: boxsync copy differs"
            t_rs, literal, received = rsync(rport, name, dst_rsync, *rsync_extra)
            assert same(box.src / name, dst_rsync / name), f"{label}: rsync copy differs"
            rows.append((label, t_box, moved_box, t_rs, literal, received))
            print(f"{label}: boxsync {t_box:.2f} s, {moved_box} B; rsync {t_rs:.2f} s, literal {literal} B, received {received} B", flush=True)

        measure("first copy", "big.bin")
        if old:
            for i in range(2):
                for tag, b, dst in (("old", old, work / f"dst-old-{i}"), ("new", box, work / f"dst-new-{i}")):
                    t, _, _ = b.download(dst, "big.bin")
                    rows.append((f"first copy, {tag} build, round {i + 1}", t, size, None, None, None))
                    print(f"first copy {tag} round {i + 1}: {t:.2f} s", flush=True)
        with open(data, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(MIB))
        measure("1 MiB overwritten in the middle", "big.bin")
        with open(data, "ab") as f:
            f.write(os.urandom(MIB))
        measure("1 MiB appended", "big.bin")
        os.rename(data, box.src / "moved.bin")
        measure("rename", "moved.bin", "--fuzzy")
        moved = box.src / "moved.bin"
        content = moved.read_bytes()
        moved.write_bytes(content[:100] + b"0123456789" + content[100:])
        del content
        measure("10 bytes inserted at offset 100", "moved.bin")
        # Resume: boxsync killed at half, then again.
        resume = work / "dst-resume"
        fsize = moved.stat().st_size
        kept = box.download_killed_at(resume, "moved.bin", 0.5, fsize)
        t2, moved2, doc = box.download(resume, "moved.bin")
        assert same(moved, resume / "moved.bin"), "resumed copy differs"
        total = kept + moved2
        print(f"resume: kept {kept} B at the kill, then fetched {moved2} B ({doc.get('reused')} reused): {total / fsize:.3f} of the file", flush=True)
        # rsync --partial, interrupted at half with SIGINT, then again.
        rdst = work / "dst-rsync-resume"
        rdst.mkdir()
        proc = subprocess.Popen(
            ["rsync", "-a", "--partial", f"rsync://127.0.0.1:{rport}/src/moved.bin", f"{rdst}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: allocated(rdst) >= 0.5 * fsize or proc.poll() is not None, 60, 0.005)
        proc.send_signal(signal.SIGINT)
        proc.wait()
        rkept = allocated(rdst)
        _, literal, received = rsync(rport, "moved.bin", rdst, "--partial")
        print(f"resume, rsync --partial: kept {rkept} B, then literal {literal} B: {(rkept + literal) / fsize:.3f} of the file", flush=True)
        rows.append(("resume at half (bytes in all / size)", None, total / fsize, None, (rkept + literal) / fsize, None))
        rsyncd.terminate()
    finally:
        for b in ("box", "old"):
            if b in locals() and locals()[b]:
                locals()[b].stop()
        shutil.rmtree(work, ignore_errors=True)
    commit = run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nmachine: {os.cpu_count()} cores ({cpu}); commit {commit}; file {a.size_mib} MiB; loopback\n")
    print("| change | boxsync | boxsync bytes | rsync | rsync literal / received | boxsync/rsync time |")
    print("|---|---|---|---|---|---|")
    for label, tb, mb, tr, lit, rec in rows:
        fmt = lambda t: "—" if t is None else f"{t:.2f} s"
        ratio = f"{tb / tr:.2f}" if tb and tr else "—"
        if isinstance(mb, float):
            print(f"| {label} | | {mb:.3f} | | {lit:.3f} | |")
        else:
            print(f"| {label} | {fmt(tb)} | {mb:,} | {fmt(tr)} | {'' if lit is None else f'{lit:,} / {rec:,}'} | {ratio} |")


if __name__ == "__main__":
    main()
