"""Benches install the reference tools they need: `need("rsync")` returns when the command
is on PATH, installs its Debian package (apt-get, as root) when it is not, and exits with the
install command when it cannot."""

import os
import shutil
import subprocess
import sys


def need(command, package=None):
    """Makes sure `command` runs here, installing Debian's `package` (default: same name)."""
    package = package or command
    if shutil.which(command) is not None:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench: {command} is missing: apt-get install -y {package}")
    print(f"bench: installing {package} (apt-get)...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = {"stdout": subprocess.DEVNULL, "env": env}
    if subprocess.run(["apt-get", "install", "-y", "-q", package], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, **quiet)
    if shutil.which(command) is None:
        sys.exit(f"bench: installed {package}, but {command} is still not on PATH")
