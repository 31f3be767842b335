#!/usr/bin/env bash
# Benchmark: a verified UDP download against a verified TCP download of the same file on
# clean loopback, measured in the same run (issue 3, item 1).
#
#   bench/loopback_udp_tcp.sh [SIZE_MIB] [RUNS]        (defaults: 1024 MiB, 3 runs)
#
# The serving box hashes the file first (one `hash verify`), so both transports run with
# its digests cached; the time is boxsync's own "seconds" (transfer, verification and
# installation). Medians of RUNS alternating runs.
set -euo pipefail
size_mib=${1:-1024}
runs=${2:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/boxsync
work=$(mktemp -d /tmp/boxsync-loopback-XXXXXX)
server=
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/src"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/src/big.bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve -d "$work/src" -l "127.0.0.1:$port" > "$work/serve.out" 2>/dev/null &
server=$!
for _ in $(seq 100); do grep -q serving "$work/serve.out" && break; sleep 0.1; done
"$bin" -d "$work/warm" -p "127.0.0.1:$port" -c "hash verify big.bin" > /dev/null
seconds() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["seconds"])'; }
tcp=(); udp=()
for i in $(seq "$runs"); do
  rm -rf "$work/dst"
  tcp+=("$("$bin" -d "$work/dst" -p "127.0.0.1:$port" --json -c "download tcp big.bin" | seconds)")
  cmp "$work/src/big.bin" "$work/dst/big.bin"
  rm -rf "$work/dst"
  udp+=("$("$bin" -d "$work/dst" -p "127.0.0.1:$port" --json -c "download udp big.bin" | seconds)")
  cmp "$work/src/big.bin" "$work/dst/big.bin"
  echo "round $i: tcp ${tcp[-1]} s, udp ${udp[-1]} s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
python3 - "$size_mib" "$(median "${tcp[@]}")" "$(median "${udp[@]}")" <<'PY'
import sys
mib, tcp, udp = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"{mib} MiB on loopback, medians: tcp {tcp:.3f} s ({mib/tcp:.0f} MiB/s), "
      f"udp {udp:.3f} s ({mib/udp:.0f} MiB/s); udp/tcp throughput ratio {tcp/udp:.2f} (target >= 0.5)")
PY
