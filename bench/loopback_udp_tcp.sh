#!/usr/bin/env bash
# Benchmark: a verified UDP download against a verified TCP download of the same file on
# clean loopback, measured in the same run (issue 3, item 1).
#
#   bench/loopback_udp_tcp.sh [--bin PATH] [SIZE_MIB] [RUNS]   (defaults: 1024 MiB, 3 runs)
#
# --bin PATH measures that boxsync binary instead of building this tree's. Both forms of the
# command line work (bench/boxsync_cli.sh): a build with the `id` subcommand (issue 18) gets
# `-p SERVER_ID@127.0.0.1:PORT` and its serving box `--trust CLIENT_ID`; an older build
# gets `-p 127.0.0.1:PORT`.
#
# The serving box hashes the file first (one `hash verify`), so both transports run with
# its digests cached; the time is boxsync's own "seconds" (transfer, verification and
# installation). Medians of RUNS alternating runs.
set -euo pipefail
bin=
if [ "${1:-}" = --bin ]; then bin=$(realpath "${2:?--bin needs a path}"); shift 2; fi
size_mib=${1:-1024}
runs=${2:-3}
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=${CARGO_TARGET_DIR:-$root/target}/release/boxsync
fi
[ -x "$bin" ] || { echo "bench: $bin is not an executable file" >&2; exit 2; }
work=$(mktemp -d /tmp/boxsync-loopback-XXXXXX)
server=
cleanup() { if [[ -n $server ]]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; fi; rm -rf "$work"; }
trap cleanup EXIT
export BX_SCRATCH=$work
# shellcheck source=bench/boxsync_cli.sh
source "$root/bench/boxsync_cli.sh"
bx_probe "$bin"
form=$(bx_form "$bin")
echo "bench: $(bx_describe "$bin")" >&2
server_id=$(bx_init_box "$bin" "$work/src" "$work/ident-src")
client_id=$(bx_init_box "$bin" "$work/dst" "$work/ident-dst")
mapfile -t trust < <(bx_trust "$form" "$client_id")
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/src/big.bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peer=$(bx_peer "$form" "$server_id" "127.0.0.1:$port")
"$bin" serve -d "$work/src" -l "127.0.0.1:$port" "${trust[@]}" > "$work/serve.out" 2>/dev/null &
server=$!
for _ in $(seq 100); do grep -q serving "$work/serve.out" && break; sleep 0.1; done
grep -q serving "$work/serve.out" || { echo "bench: the serving box did not start" >&2; exit 1; }
"$bin" -d "$work/dst" -p "$peer" -c "hash verify big.bin" > /dev/null
seconds() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["seconds"])'; }
tcp=(); udp=()
for i in $(seq "$runs"); do
  bx_reset_box "$work/dst" "$work/ident-dst"
  tcp+=("$("$bin" -d "$work/dst" -p "$peer" --json -c "download tcp big.bin" | seconds)")
  cmp "$work/src/big.bin" "$work/dst/big.bin"
  bx_reset_box "$work/dst" "$work/ident-dst"
  udp+=("$("$bin" -d "$work/dst" -p "$peer" --json -c "download udp big.bin" | seconds)")
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
