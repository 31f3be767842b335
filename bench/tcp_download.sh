#!/usr/bin/env bash
# Benchmark: a verified boxsync TCP download of one large file on loopback, against rsync
# from an rsync daemon on loopback, measured in the same run on the same file.
#
#   bench/tcp_download.sh [SIZE_MIB] [RUNS]        (defaults: 1024 MiB, 3 runs)
#
# Each tool copies the file into an empty destination RUNS times; the median wall-clock
# time of the whole command (process start to exit) is reported. The source file sits in
# the page cache for every run (it was just written, and every run reads it), so both tools
# read from memory. boxsync runs twice per round: "cold" (the serving box has no cached
# hashes: it hashes while sending) and "warm" (digests cached from the previous download).
# Needs: rsync (apt-get install rsync), python3, a release build (made here).
set -euo pipefail
size_mib=${1:-1024}
runs=${2:-3}
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || { echo "bench: rsync is missing: apt-get install rsync" >&2; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/boxsync

work=$(mktemp -d /tmp/boxsync-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/src" "$work/dst-box" "$work/dst-rsync"
echo "writing a ${size_mib} MiB random file..." >&2
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/src/big.bin"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
box_port=$(free_port)
rsync_port=$(free_port)

"$bin" serve -d "$work/src" -l "127.0.0.1:$box_port" > "$work/serve.out" 2> "$work/serve.log" &
pids+=($!)
cat > "$work/rsyncd.conf" <<EOF
use chroot = no
[src]
  path = $work/src
  read only = yes
EOF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port="$rsync_port" --address=127.0.0.1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q serving "$work/serve.out" 2>/dev/null && rsync "rsync://127.0.0.1:$rsync_port/" >/dev/null 2>&1 && break
  sleep 0.1
done

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

run_boxsync() {
  rm -rf "$work/dst-box"
  local t0 t1
  t0=$(now)
  "$bin" -d "$work/dst-box" -p "127.0.0.1:$box_port" --json -c "download tcp big.bin" > "$work/box.json"
  t1=$(now)
  grep -q '"transport":"tcp"' "$work/box.json"
  elapsed "$t0" "$t1"
}

run_rsync() {
  rm -rf "$work/dst-rsync"; mkdir -p "$work/dst-rsync"
  local t0 t1
  t0=$(now)
  rsync -a $1 "rsync://127.0.0.1:$rsync_port/src/big.bin" "$work/dst-rsync/"
  t1=$(now)
  elapsed "$t0" "$t1"
}

cold=(); warm=(); rs=(); rsf=()
for i in $(seq "$runs"); do
  rm -f "$work/src/.boxsync/hash-cache.json"
  # Restart the serving box so its in-memory hash cache is empty too.
  kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
  : > "$work/serve.out"
  "$bin" serve -d "$work/src" -l "127.0.0.1:$box_port" > "$work/serve.out" 2>> "$work/serve.log" &
  pids[0]=$!
  for _ in $(seq 100); do grep -q serving "$work/serve.out" && break; sleep 0.1; done
  cold+=("$(run_boxsync)")
  warm+=("$(run_boxsync)")
  rs+=("$(run_rsync "")")
  rsf+=("$(run_rsync --fsync)")
  echo "round $i: boxsync cold ${cold[-1]}s, warm ${warm[-1]}s; rsync ${rs[-1]}s, rsync --fsync ${rsf[-1]}s" >&2
done
cmp "$work/src/big.bin" "$work/dst-box/big.bin"
cmp "$work/src/big.bin" "$work/dst-rsync/big.bin"

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
python3 - "$size_mib" "$(median "${cold[@]}")" "$(median "${warm[@]}")" "$(median "${rs[@]}")" "$(median "${rsf[@]}")" <<'EOF'
import sys
mib, cold, warm, rs, rsf = int(sys.argv[1]), *map(float, sys.argv[2:])
rate = lambda t: f"{mib / t:7.0f} MiB/s"
print(f"file: {mib} MiB, medians of runs")
print(f"rsync (daemon, loopback)        {rs:7.3f} s  {rate(rs)}")
print(f"rsync --fsync                   {rsf:7.3f} s  {rate(rsf)}")
print(f"boxsync download tcp, cold      {cold:7.3f} s  {rate(cold)}  ratio vs rsync {rs / cold:.2f}")
print(f"boxsync download tcp, warm      {warm:7.3f} s  {rate(warm)}  ratio vs rsync {rs / warm:.2f}")
print(f"(ratio = rsync time / boxsync time; >= 1.0 means boxsync is at least as fast;")
print(f" boxsync always flushes to disk before renaming: compare with rsync --fsync too:")
print(f" cold {rsf / cold:.2f}, warm {rsf / warm:.2f})")
EOF
