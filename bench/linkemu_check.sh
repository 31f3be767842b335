#!/usr/bin/env bash
# Sanity checks of the emulated link (bench/linkemu, bench/emulated_link.sh), needs root
# and iperf3 (apt-get install iperf3):
#
#   bench/linkemu_check.sh [SECONDS]      (iperf3 duration, default 10)
#
# 1. idle round trip: ping -c 20 (expect 2 x EMU_DELAY_MS, 50 ms by default);
# 2. a plain TCP sender at 0% loss: iperf3 with CUBIC, then BBR (expect close to the rate:
#    at 100 Mbit/s at most 96.5 Mbit/s of TCP payload with 1500-byte packets);
# 3. 1% loss each way: ping -c 1000 -i 0.01 (expect about 2% lost round trip);
# 4. a plain TCP sender at 1% loss: iperf3 CUBIC and BBR, for comparison with boxsync.
# linkemu's counters (including how late it wrote packets) are printed after each step.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "bench: linkemu_check.sh needs root" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "bench: iperf3 is missing: apt-get install iperf3" >&2; exit 1; }
seconds=${1:-10}
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/boxsync-linkcheck-XXXXXX)
export EMU_LOG_DIR=$work
# shellcheck source=bench/emulated_link.sh
source bench/emulated_link.sh
emu_build
iperf_pid=
cleanup() {
  if [ -n "$iperf_pid" ]; then kill "$iperf_pid" 2>/dev/null || true; fi
  emu_teardown
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The direction the data of a step took, from linkemu's counters.
counters() {
  emu_stats | python3 -c '
import json, sys
stats = json.loads(sys.stdin.read())
for direction in ("a_to_b", "b_to_a"):
    c = stats[direction]
    print("  linkemu {}: {} packets, lost {}, queue drops {}, written late by {} us on average, "
          "{} us at most".format(direction, c["packets"], c["lost"], c["queue_drops"],
                                 c["late_us_mean"], c["late_us_max"]))'
}

iperf() {
  local cc=$1
  ip netns exec "$EMU_NS_B" iperf3 -s -1 -B "$EMU_ADDR_B" > "$work/iperf-server.txt" 2>&1 &
  iperf_pid=$!
  sleep 0.3
  echo "iperf3 -C $cc, ${seconds} s, bxa -> bxb:"
  ip netns exec "$EMU_NS_A" iperf3 -c "$EMU_ADDR_B" -C "$cc" -t "$seconds" | grep -E 'sender|receiver' | sed 's/^/  /'
  wait "$iperf_pid" || true
  iperf_pid=
}

echo "link: ${EMU_RATE_MBIT} Mbit/s, ${EMU_DELAY_MS} ms each way, queue ${EMU_QUEUE_BYTES:-one BDP}"
echo "== 0% loss"
emu_start 0
ip netns exec "$EMU_NS_A" ping -n -c 20 -i 0.2 "$EMU_ADDR_B" | tail -n 2 | sed 's/^/  /'
iperf cubic
iperf bbr
counters
echo "== 1% loss each way"
emu_start 0.01
ip netns exec "$EMU_NS_A" ping -n -q -c 1000 -i 0.01 "$EMU_ADDR_B" | tail -n 2 | sed 's/^/  /' || true
counters
iperf cubic
iperf bbr
counters
