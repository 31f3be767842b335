#!/usr/bin/env python3
"""The tree of bench/scale.py (issue 20): N files of 200-2,000 random bytes in N/100 folders
(100 files each), the same names and bytes for the same N and seed.

    python3 bench/scale_tree.py DIR N [--seed 1]

make_tree() returns the sorted list of (relative path, size) it wrote, which scale.py uses
to know when a copy is complete without walking the tree.
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path


def names(n, seed=1):
    """The (relative path, size) of every file of the tree, in name order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append((f"d{i // 100:05d}/f{i:07d}.bin", rng.randint(200, 2000)))
    return out


def make_tree(folder, n, seed=1):
    """Writes the tree into `folder` (created); returns names(n, seed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = names(n, seed)
    data = random.Random(seed + 1)
    made = None
    base = str(folder)
    for rel, size in entries:
        d = rel.split("/", 1)[0]
        if d != made:
            os.mkdir(os.path.join(base, d))
            made = d
        fd = os.open(os.path.join(base, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data.randbytes(size))
        finally:
            os.close(fd)
    return entries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.dir.exists() and any(args.dir.iterdir()):
        sys.exit(f"scale_tree: {args.dir} is not empty")
    t0 = time.monotonic()
    entries = make_tree(args.dir, args.n, args.seed)
    print(f"{len(entries)} files, {sum(s for _, s in entries) / 1e6:.1f} MB in "
          f"{(args.n + 99) // 100} folders, {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
