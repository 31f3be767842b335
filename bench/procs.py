"""Processes a bench starts and what /proc says of them, shared by bench/hub.py and
bench/scale.py: every process spawned is stopped at exit (`atexit.register(kill_all)`),
`stop` ends some early, and the CPU counters are read from /proc."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Every process `spawn` started and `stop` has not stopped yet.
PROCS = []

# How long a stopped process gets to exit after SIGTERM before SIGKILL.
GRACE = 30


def kill_all():
    """Stops every process still running (at exit)."""
    stop(*PROCS)


def on_signal(signum, _frame):
    sys.exit(f"bench: stopped by signal {signum}")


def spawn(cmd, **kw):
    proc = subprocess.Popen(cmd, **kw)
    PROCS.append(proc)
    return proc


def stop(*procs):
    """SIGTERM, then SIGKILL after GRACE seconds; each is forgotten."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p in PROCS:
            PROCS.remove(p)


def wait_until(condition, timeout, step=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of `pid` from /proc/PID/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_seconds():
    """CPU time the host took from this machine, all CPUs, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")
