# Shell functions (source this file, needs root) that put two network namespaces at the
# two ends of an emulated long-distance link (bench/linkemu):
#
#   ns bxa: bxa0 10.201.0.1/24  <-- linkemu: rate, delay, queue, loss -->  ns bxb: bxb0 10.201.0.2/24
#
# This machine's kernel has no netem qdisc, so linkemu does the delaying, queueing and
# losing in user space between two TUN devices. Nothing is routed anywhere else: each
# namespace has only its loopback and its TUN device.
#
#   emu_build                        build linkemu (release)
#   emu_start LOSS [LINKEMU_ARGS]    (re)start linkemu and configure both namespaces
#   emu_stats                        print linkemu's counters so far (one JSON line)
#   emu_stop                         stop linkemu (prints its final counters to the log)
#   emu_teardown                     stop linkemu, delete the namespaces
#
# Settings (environment): EMU_RATE_MBIT (100), EMU_DELAY_MS (25, one way), EMU_QUEUE_BYTES
# (default: linkemu's, one bandwidth-delay product), EMU_SEED (1), EMU_LOG_DIR (where
# linkemu's output goes; required).

EMU_NS_A=bxa
EMU_NS_B=bxb
EMU_ADDR_A=10.201.0.1
EMU_ADDR_B=10.201.0.2
EMU_RATE_MBIT=${EMU_RATE_MBIT:-100}
EMU_DELAY_MS=${EMU_DELAY_MS:-25}
EMU_QUEUE_BYTES=${EMU_QUEUE_BYTES:-}
EMU_SEED=${EMU_SEED:-1}
EMU_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EMU_BIN=$EMU_ROOT/linkemu/target/release/linkemu
EMU_PID=
EMU_NS_READY=
# A lock so that two runs never share the namespaces; a stale pair (a run that was killed
# with SIGKILL) is deleted by the next run that gets the lock.
EMU_LOCK=/run/boxsync-linkemu.lock

emu_build() {
  cargo build --release --quiet --manifest-path "$EMU_ROOT/linkemu/Cargo.toml"
}

# Takes the lock (fd 9) and creates both namespaces, deleting stale ones first.
emu_namespaces() {
  exec 9>"$EMU_LOCK"
  flock -n 9 || { echo "emulated link: another run holds $EMU_LOCK" >&2; return 1; }
  local ns
  for ns in "$EMU_NS_A" "$EMU_NS_B"; do
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No per-destination TCP metrics cache: each download starts from scratch instead of
    # inheriting the previous run's ssthresh.
    ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_no_metrics_save=1
    # IPv4 only: keeps router solicitations and the like off the link and its counters.
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  EMU_NS_READY=1
}

emu_start() {
  local loss=$1; shift
  emu_stop
  [ -n "$EMU_NS_READY" ] || emu_namespaces || return 1
  local args=(--tun-a "${EMU_NS_A}0" --tun-b "${EMU_NS_B}0" --rate-mbit "$EMU_RATE_MBIT"
              --delay-ms "$EMU_DELAY_MS" --loss "$loss" --seed "$EMU_SEED")
  [ -n "$EMU_QUEUE_BYTES" ] && args+=(--queue-bytes "$EMU_QUEUE_BYTES")
  # Real-time priority: the emulated network must not be late because a box (or a build
  # next door) is using the CPU, as a real network would not be.
  local rt=()
  command -v chrt >/dev/null && rt=(chrt -f 20)
  : > "$EMU_LOG_DIR/linkemu.out"
  "${rt[@]}" "$EMU_BIN" "${args[@]}" "$@" >> "$EMU_LOG_DIR/linkemu.out" 2>> "$EMU_LOG_DIR/linkemu.log" &
  EMU_PID=$!
  local _
  for _ in $(seq 100); do
    grep -q '"event":"ready"' "$EMU_LOG_DIR/linkemu.out" && break
    kill -0 "$EMU_PID" 2>/dev/null || { echo "emulated link: linkemu failed, see $EMU_LOG_DIR/linkemu.log" >&2; EMU_PID=; return 1; }
    sleep 0.05
  done
  grep -q '"event":"ready"' "$EMU_LOG_DIR/linkemu.out" || { echo "emulated link: linkemu did not start" >&2; return 1; }
  # The devices stay attached to linkemu's descriptors when they move to the namespaces.
  local ns dev addr
  for ns in "$EMU_NS_A" "$EMU_NS_B"; do
    dev=${ns}0
    [ "$ns" = "$EMU_NS_A" ] && addr=$EMU_ADDR_A || addr=$EMU_ADDR_B
    ip link set "$dev" netns "$ns"
    ip -n "$ns" link set "$dev" mtu 1500
    ip -n "$ns" addr add "$addr/24" dev "$dev"
    ip -n "$ns" link set "$dev" up
  done
}

# Asks linkemu for its counters and prints the JSON line it answers with.
emu_stats() {
  [ -n "$EMU_PID" ] || return 1
  local before
  before=$(grep -c '"event":"stats"' "$EMU_LOG_DIR/linkemu.out" || true)
  kill -USR1 "$EMU_PID"
  local _
  for _ in $(seq 100); do
    [ "$(grep -c '"event":"stats"' "$EMU_LOG_DIR/linkemu.out" || true)" -gt "$before" ] && break
    sleep 0.01
  done
  grep '"event":"stats"' "$EMU_LOG_DIR/linkemu.out" | tail -n 1
}

emu_stop() {
  if [ -n "$EMU_PID" ]; then
    kill -TERM "$EMU_PID" 2>/dev/null || true
    wait "$EMU_PID" 2>/dev/null || true
    EMU_PID=
  fi
}

# Deletes the namespaces only if this run made them (not another run's, if the lock failed).
emu_teardown() {
  emu_stop
  if [ -n "$EMU_NS_READY" ]; then
    ip netns del "$EMU_NS_A" 2>/dev/null || true
    ip netns del "$EMU_NS_B" 2>/dev/null || true
    EMU_NS_READY=
  fi
}
