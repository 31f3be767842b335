#!/usr/bin/env python3
"""Sync whoever dials (issue 19): a hub that dials no one keeps the laptops that dial it in
sync, over the one session each laptop opened. Measured on loopback, in one run:

a. laptop 1 -> laptop 2 through the hub: a new small file (4 KiB), and separately a new
   1 MiB file, written on L1, until the same bytes are on L2 (the time it reached the hub
   is noted on the way, to show where the time goes);
b. hub -> laptop: a new file written on the hub until the same bytes are on L1;
c. the CPU of an idle hub with 20 idle laptops connected (1,000 files in every folder,
   made before start; converged, then measured over --idle seconds).

    python3 bench/hub.py [--samples 20] [--laptops 20] [--files 1000] [--idle 60]
                         [--parts latency,idle] [--syncthing] [--bin PATH] [--work DIR] [--keep]

The hub: `boxsync serve -d HUB -l 127.0.0.1:0 --trust L1_ID --trust L2_ID ...`; each laptop:
`boxsync serve -d L -l none -p HUB_ID@127.0.0.1:PORT` (it listens nowhere, so only the
session it dials carries both directions). All with `--sync 10` (the default rescan period;
the watcher picks changes up) and `--no-discovery`. Builds boxsync in release mode unless
given --bin.

With --syncthing (Debian package `syncthing`), the latency parts run as well on three
Syncthing instances in the same shape (a hub sharing one folder with two laptops, the
laptops sharing only with the hub), on loopback, with global and local discovery, relays
and NAT off, and the folder's watcher delay at --syncthing-delay seconds (Syncthing's
default is 10; 1 is its lowest). Syncthing is the reference design for this feature.

Every sample waits until the same bytes are on every box before the next starts, then
--gap seconds (default 1) so that the rounds the last one set off are over. Every process
started here is killed on exit, on error too. --keep leaves the work folder, with every
box's log under logs/ (a round that failed shows there).
"""

import argparse
import atexit
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from need import need
from procs import cpu_seconds, free_port, kill_all, on_signal, spawn, steal_seconds, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "boxsync"

# Every process started by this script: killed at exit, whatever the reason.
def holds(path, content):
    """Whether `path` holds exactly `content` (the size first: cheap while it is absent)."""
    try:
        if os.stat(path).st_size != len(content):
            return False
        with open(path, "rb") as f:
            return f.read() == content
    except (FileNotFoundError, PermissionError):
        return False


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


# --- boxsync -------------------------------------------------------------------------


def box_id(folder):
    """The ID of the box in `folder`, creating its identity; before any clock starts."""
    out = subprocess.run([str(BIN), "id", "-d", str(folder)], capture_output=True, text=True)
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 1:
        sys.exit(f"bench: '{BIN} id -d {folder}' did not print one ID: "
                 f"{out.stdout.strip()!r} {out.stderr.strip()}")
    return words[0]


def start_boxsync(cmd, log):
    """Starts a box and returns it with the address it prints once listening
    ('boxsync box <ID> serving <dir> on <addr>')."""
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    words = line.split()
    if len(words) < 7 or words[:2] != ["boxsync", "box"] or "on" not in words:
        sys.exit(f"bench: the box did not start: {' '.join(cmd)} printed {line!r} "
                 f"(exit status {proc.poll()}); its log: {log.name}")
    # A laptop (-l none) says "on no port (...)"; a listening box "on HOST:PORT".
    return proc, words[words.index("on", 4) + 1]


class BoxsyncHub:
    """A hub that listens on loopback and trusts the laptops, and laptops that dial it and
    listen nowhere."""

    name = "boxsync"

    def __init__(self, work, laptops, period):
        self.work = work
        self.hub_dir = work / "hub"
        self.laptop_dirs = [work / f"laptop{i + 1}" for i in range(laptops)]
        self.period = period
        self.procs = []

    def start(self):
        for d in [self.hub_dir, *self.laptop_dirs]:
            d.mkdir(exist_ok=True)
        hub_id = box_id(self.hub_dir)
        laptop_ids = [box_id(d) for d in self.laptop_dirs]
        common = ["--sync", str(self.period), "--no-discovery"]
        cmd = [str(BIN), "serve", "-d", str(self.hub_dir), "-l", "127.0.0.1:0", *common]
        for lid in laptop_ids:
            cmd += ["--trust", lid]
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        hub, addr = start_boxsync(cmd, open(logs / "hub.log", "w"))
        self.hub = hub
        self.procs.append(hub)
        self.laptops = []
        for i, d in enumerate(self.laptop_dirs):
            cmd = [str(BIN), "serve", "-d", str(d), "-l", "none", "-p", f"{hub_id}@{addr}", *common]
            proc, _ = start_boxsync(cmd, open(logs / f"laptop{i + 1}.log", "w"))
            self.laptops.append(proc)
            self.procs.append(proc)

    def stop(self):
        stop(*self.procs)
        self.procs.clear()


# --- Syncthing -----------------------------------------------------------------------


class SyncthingHub:
    """Three Syncthing instances on loopback in the hub's shape: the hub shares folder
    `bench` with both laptops; each laptop shares it with the hub only."""

    name = "syncthing"

    def __init__(self, work, laptops, delay):
        self.work = work / "syncthing"
        self.hub_dir = self.work / "hub"
        self.laptop_dirs = [self.work / f"laptop{i + 1}" for i in range(laptops)]
        self.delay = delay
        self.procs = []

    def _generate(self, home):
        out = subprocess.run(["syncthing", "generate", f"--home={home}", "--no-default-folder",
                              "--skip-port-probing"], capture_output=True, text=True)
        for line in (out.stdout + out.stderr).splitlines():
            if "Device ID:" in line:
                return line.split("Device ID:")[1].strip()
        sys.exit(f"bench: syncthing generate printed no device ID: {out.stdout} {out.stderr}")

    def _configure(self, home, own, folder, listen, gui, key, peers):
        """Rewrites `home`/config.xml: loopback only, nothing announced, no relays, no
        reporting; the folder `bench` at `folder` shared with `peers` ([(id, port)])."""
        path = home / "config.xml"
        tree = ET.parse(path)
        root = tree.getroot()
        opts = root.find("options")
        settings = {
            "listenAddress": f"tcp://127.0.0.1:{listen}",
            "globalAnnounceEnabled": "false", "localAnnounceEnabled": "false",
            "relaysEnabled": "false", "natEnabled": "false", "startBrowser": "false",
            "urAccepted": "-1", "crashReportingEnabled": "false",
            "autoUpgradeIntervalH": "0", "setLowPriority": "false",
        }
        for tag, value in settings.items():
            el = opts.find(tag)
            if el is None:
                el = ET.SubElement(opts, tag)
            el.text = value
        gui_el = root.find("gui")
        gui_el.find("address").text = f"127.0.0.1:{gui}"
        gui_el.find("apikey").text = key
        for peer_id, port in peers:
            dev = ET.SubElement(root, "device", id=peer_id, name=peer_id[:7],
                                compression="metadata", introducer="false")
            ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{port}"
        fold = ET.Element("folder", id="bench", label="bench", path=str(folder),
                          type="sendreceive", rescanIntervalS="3600", fsWatcherEnabled="true",
                          fsWatcherDelayS=str(self.delay), ignorePerms="false",
                          autoNormalize="true")
        for dev_id in [own] + [p for p, _ in peers]:
            ET.SubElement(fold, "device", id=dev_id)
        root.insert(0, fold)
        tree.write(path)

    def _get(self, gui, key, what):
        req = urllib.request.Request(f"http://127.0.0.1:{gui}/rest/{what}",
                                     headers={"X-API-Key": key})
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.read()

    def _connected(self, gui, key, count):
        import json
        try:
            conns = json.loads(self._get(gui, key, "system/connections"))["connections"]
        except (OSError, ValueError):
            return False
        return sum(1 for c in conns.values() if c.get("connected")) >= count

    def start(self):
        need("syncthing")
        names = ["hub"] + [f"laptop{i + 1}" for i in range(len(self.laptop_dirs))]
        dirs = [self.hub_dir, *self.laptop_dirs]
        homes = [self.work / f"home-{n}" for n in names]
        ids = [self._generate(h) for h in homes]
        listens = [free_port() for _ in names]
        guis = [free_port() for _ in names]
        key = "boxsync-hub-bench-key"
        for i, (home, d) in enumerate(zip(homes, dirs)):
            d.mkdir(parents=True, exist_ok=True)
            (d / ".stfolder").mkdir(exist_ok=True)
            if i == 0:
                peers = list(zip(ids[1:], listens[1:]))
            else:
                peers = [(ids[0], listens[0])]
            self._configure(home, ids[i], d, listens[i], guis[i], key, peers)
        env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1")
        for name, home in zip(names, homes):
            log = open(self.work / f"{name}.log", "w")
            self.procs.append(spawn(["syncthing", "serve", f"--home={home}", "--no-browser",
                                     "--no-restart", "--no-upgrade"],
                                    stdout=log, stderr=subprocess.STDOUT, env=env))
        self.hub = self.procs[0]
        # Every laptop connected to the hub (the hub sees them all).
        if not wait_until(lambda: self._connected(guis[0], key, len(self.laptop_dirs)), 60, 0.2):
            sys.exit(f"bench: the Syncthing laptops did not connect to the hub; logs in {self.work}")

    def stop(self):
        stop(*self.procs)
        self.procs.clear()


# --- the measures --------------------------------------------------------------------


def settle(boxes, folders, name, content, deadline=60):
    """Writes `name` on the first of `folders` and waits until the same bytes are on all
    of them: proves every link carries changes before a clock starts."""
    (folders[0] / name).write_bytes(content)
    if not wait_until(lambda: all(holds(f / name, content) for f in folders), deadline, 0.01):
        missing = [str(f) for f in folders if not holds(f / name, content)]
        sys.exit(f"bench: {boxes.name}: {name} did not reach {', '.join(missing)} in {deadline} s")


def time_write(source, dest, via, name, content, deadline=30):
    """Writes `name` into `source`; returns (seconds until it is on `dest`, seconds until
    it was on `via` or None). Polls both every 2 ms."""
    src, dst = source / name, dest / name
    mid = via / name if via else None
    t0 = time.monotonic()
    src.write_bytes(content)
    t_via = None
    end = t0 + deadline
    while time.monotonic() < end:
        now = time.monotonic()
        if mid is not None and t_via is None and holds(mid, content):
            t_via = now - t0
        if holds(dst, content):
            if mid is not None and t_via is None:
                t_via = now - t0
            return now - t0, t_via
        time.sleep(0.002)
    sys.exit(f"bench: {name} did not reach {dest} within {deadline} s")


def summary(values):
    s = sorted(values)
    return (f"median {statistics.median(s) * 1000:.0f} ms, p90 {percentile(s, 0.9) * 1000:.0f} ms, "
            f"min {s[0] * 1000:.0f}, max {s[-1] * 1000:.0f}")


def measure_latency(boxes, samples, gap):
    """Parts a and b on a started hub with two laptops. Returns report lines."""
    hub, l1, l2 = boxes.hub_dir, boxes.laptop_dirs[0], boxes.laptop_dirs[1]
    everyone = [hub, l1, l2]
    # Every path works before any clock starts: L1 -> hub -> L2, and hub -> both.
    settle(boxes, [l1, hub, l2], "warmup-laptop.bin", os.urandom(4096))
    settle(boxes, [hub, l1, l2], "warmup-hub.bin", os.urandom(4096))
    lines = []
    cases = [
        ("a. L1 -> L2 via the hub, 4 KiB", l1, l2, hub, 4096, "target: median < 1 s"),
        ("   L1 -> L2 via the hub, 1 MiB", l1, l2, hub, 1 << 20, "target: median < 1 s"),
        ("b. hub -> L1, 4 KiB", hub, l1, None, 4096, "target: < 0.5 s"),
    ]
    for label, source, dest, via, size, target in cases:
        totals, firsts = [], []
        for i in range(samples):
            name = f"{source.name}-{size}-{i}.bin"
            content = os.urandom(size)
            total, first = time_write(source, dest, via, name, content)
            totals.append(total)
            if first is not None:
                firsts.append(first)
            # The next sample starts once every box holds this one and its rounds are over.
            if not wait_until(lambda: all(holds(f / name, content) for f in everyone), 30, 0.01):
                sys.exit(f"bench: {boxes.name}: {name} did not reach every box")
            time.sleep(gap)
        line = f"{boxes.name} {label}, {samples} samples: {summary(totals)}"
        if firsts:
            line += f"; on the hub after: {summary(firsts)}"
        lines.append(f"{line}   ({target})")
    return lines


def make_tree(folder, n, seed=1):
    """`n` small files (100-4,000 bytes) in 50 folders, the same bytes for the same seed."""
    rng = random.Random(seed)
    for i in range(n):
        d = folder / f"d{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(100, 4000)))


def measure_idle(work, laptops, files, idle, period):
    """Part c: a hub with `laptops` laptops, every folder holding the same `files` files
    (copied with their times) before start; once a marker written on the hub is on every
    laptop and the hub has been quiet (under 5% of a core) for one rescan period, the
    hub's CPU over `idle` seconds."""
    work = work / "idle"
    work.mkdir()
    template = work / "template"
    make_tree(template, files)
    boxes = BoxsyncHub(work, laptops, period)
    for d in [boxes.hub_dir, *boxes.laptop_dirs]:
        shutil.copytree(template, d)
    t0 = time.monotonic()
    boxes.start()
    try:
        marker = os.urandom(64)
        (boxes.hub_dir / "marker.bin").write_bytes(marker)
        if not wait_until(lambda: all(holds(d / "marker.bin", marker) for d in boxes.laptop_dirs),
                          300, 0.05):
            missing = [d.name for d in boxes.laptop_dirs if not holds(d / "marker.bin", marker)]
            sys.exit(f"bench: the hub's marker did not reach {', '.join(missing)} in 300 s")
        reached = time.monotonic() - t0
        # Converged: a whole rescan period in which the hub used under 5% of a core.
        quiet_deadline = time.monotonic() + 300
        while True:
            c0, w0 = cpu_seconds(boxes.hub.pid), time.monotonic()
            time.sleep(period)
            share = (cpu_seconds(boxes.hub.pid) - c0) / (time.monotonic() - w0)
            if share < 0.05:
                break
            if time.monotonic() > quiet_deadline:
                print(f"bench: the hub never went quiet (last {period} s: {share * 100:.1f}% "
                      "of a core); measuring anyway", file=sys.stderr)
                break
        converged = time.monotonic() - t0
        pids = [p.pid for p in boxes.laptops]
        h0, l0, s0, w0 = cpu_seconds(boxes.hub.pid), sum(map(cpu_seconds, pids)), steal_seconds(), time.monotonic()
        time.sleep(idle)  # the measured window
        h1, l1, s1, w1 = cpu_seconds(boxes.hub.pid), sum(map(cpu_seconds, pids)), steal_seconds(), time.monotonic()
        alive = [p for p in boxes.procs if p.poll() is not None]
        if alive:
            sys.exit(f"bench: {len(alive)} box(es) exited during the idle window")
    finally:
        boxes.stop()
    window = w1 - w0
    return [f"c. idle hub, {laptops} laptops connected, {files} files in every folder: hub "
            f"{h1 - h0:.2f} CPU-s in {window:.1f} s = {(h1 - h0) / window * 100:.2f}% of one core   "
            f"(target < 1%)",
            f"   the {laptops} laptops together: {(l1 - l0) / window * 100:.2f}% of one core "
            f"({(l1 - l0) / window / laptops * 100:.2f}% each); machine steal {s1 - s0:.2f} CPU-s; "
            f"marker on every laptop {reached:.1f} s after start, quiet at {converged:.1f} s"]


def progress(lines, new):
    """Adds `new` to the report and shows it on stderr at once (the whole report is
    printed on stdout at the end)."""
    for line in new:
        print(line, file=sys.stderr, flush=True)
    lines.extend(new)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--gap", type=float, default=1.0,
                    help="seconds between samples, once every box holds the last one")
    ap.add_argument("--laptops", type=int, default=20, help="laptops in the idle part")
    ap.add_argument("--files", type=int, default=1000, help="files in every folder, idle part")
    ap.add_argument("--idle", type=int, default=60, help="the idle part's measured window, s")
    ap.add_argument("--period", type=int, default=10, help="boxsync's --sync (rescan period)")
    ap.add_argument("--parts", default="latency,idle", help="comma-separated: latency,idle")
    ap.add_argument("--syncthing", action="store_true",
                    help="run the latency parts on Syncthing too (the reference)")
    ap.add_argument("--syncthing-delay", type=int, default=1,
                    help="Syncthing's fsWatcherDelayS (its default is 10)")
    ap.add_argument("--bin", type=Path, default=None,
                    help="boxsync binary to measure instead of building target/release/boxsync")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (folders and every box's log) at exit")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder to work in (a new folder under it; default under /tmp)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"latency", "idle"}:
        sys.exit(f"bench: unknown part(s): {', '.join(sorted(parts - {'latency', 'idle'}))}")
    if args.samples < 1:
        sys.exit("bench: --samples must be at least 1")
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    global BIN
    if args.bin is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    else:
        BIN = args.bin.resolve()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"bench: {BIN} is not an executable file")
    work = Path(tempfile.mkdtemp(prefix="boxsync-hubbench-", dir=args.work))
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "unknown")
    lines = [f"machine: {os.cpu_count()} cores ({model}); loopback; boxsync {BIN}, "
             f"--sync {args.period} --no-discovery; work in {work}"]
    try:
        if "latency" in parts:
            boxes = BoxsyncHub(work / "latency", 2, args.period)
            (work / "latency").mkdir()
            boxes.start()
            try:
                progress(lines, measure_latency(boxes, args.samples, args.gap))
            finally:
                boxes.stop()
            if args.syncthing:
                st = SyncthingHub(work, 2, args.syncthing_delay)
                st.start()
                try:
                    version = subprocess.run(["syncthing", "--version"], capture_output=True,
                                             text=True).stdout.split()[1]
                    progress(lines, [f"syncthing {version}, fsWatcherDelayS={args.syncthing_delay}:"])
                    progress(lines, measure_latency(st, args.samples, args.gap))
                finally:
                    st.stop()
        if "idle" in parts:
            progress(lines, measure_idle(work, args.laptops, args.files, args.idle, args.period))
        print("\n".join(lines))
    finally:
        kill_all()
        if args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
