#!/usr/bin/env bash
# Benchmark: boxsync's TCP (CUBIC and BBR) and UDP downloads across an emulated
# long-distance lossy link (100 Mbit/s, 50 ms round trip, drop-tail queue of one
# bandwidth-delay product, random loss in both directions), at several loss levels.
#
#   bench/udp_vs_tcp.sh [options]                    (needs root: namespaces, TUN devices)
#
#   --transports LIST   of tcp-cubic, tcp-bbr, udp (default: all three)
#   --losses LIST       loss percentages, each direction (default: 0,1,2,5,10)
#   --size-mib N        size of the random test file (default: 64)
#   --tcp-timeout S     time limit of one TCP download (default: 120)
#   --udp-timeout S     time limit of one UDP download (default: 120)
#   --repeat N          downloads per transport and loss level, each with its own loss
#                       seed (EMU_SEED, EMU_SEED+1, ...); the table and plot show medians
#   --boxsync-bin PATH  use this boxsync binary instead of building target/release/boxsync
#   --fresh             forget earlier results instead of merging with them
#   --results DIR       where the CSV and the plot go (default: bench/results, the committed
#                       ones; give another folder for a pass that must not replace them)
#   --clock C           what a completed download's goodput is timed by: "reported" (the
#                       "seconds" boxsync reports: request sent to file verified and
#                       installed; the default, as in every committed figure) or "wall"
#                       (the whole client command, process start to exit; issue 18's clock)
#
# The command line of the binary is probed (bench/boxsync_cli.sh): a build with the `id`
# subcommand (issue 18) gets `-p SERVER_ID@10.201.0.2:7878` on the client and
# `--trust CLIENT_ID` on the serving box; an older build gets `-p 10.201.0.2:7878`.
#
# Issue 18's UDP goal (encrypted UDP at least as fast as TCP BBR at every loss level, for
# 20 and 64 MiB, whole command's wall time), TCP BBR measured in the same pass, each pass
# in its own results folder so the committed CSV stays; the old build (the unencrypted
# 6e35d9f, /work/wt-old) alternated pass by pass with the TLS build:
#
#   OLD=/work/wt-old/target/release/boxsync NEW=$PWD/target/release/boxsync
#   for mib in 20 64; do
#     for build in old new; do
#       [ $build = old ] && b=$OLD || b=$NEW
#       sudo bench/udp_vs_tcp.sh --transports tcp-bbr,udp --size-mib $mib --repeat 3 \
#         --clock wall --fresh --results /tmp/udp18-$build-$mib --boxsync-bin "$b" | tee -a /tmp/udp18.txt
#     done
#   done
#
# Link settings come from the environment: EMU_RATE_MBIT, EMU_DELAY_MS (one way),
# EMU_QUEUE_BYTES, EMU_SEED (see bench/emulated_link.sh).
#
# The serving box runs in namespace bxb (10.201.0.2), the downloading box in bxa
# (10.201.0.1); linkemu (bench/linkemu) sits between them and is restarted for every loss
# level and repetition. Each download is one `boxsync --json -c "download ..."`;
# goodput = size x 8 / the "seconds" it reports (request sent to file verified and
# installed). Both folders are on tmpfs, so the final fsync costs nothing.
#
# A download still running at its time limit (CUBIC at 1% loss and more: about 2 Mbit/s
# or less) is stopped; its goodput is the bytes delivered so far divided by the time since
# the client started, and its row has status "timeout". Bytes delivered: for TCP, what the
# receiver had acknowledged (bytes_acked of the serving box's socket, from ss); for UDP,
# the bytes written to the partial file so far. A failed download (for
# example "download udp is not available yet") is recorded as status "failed" with no
# goodput, and the run goes on.
#
# During every download, ping -i 0.01 runs from bxa to bxb: its replies queue behind the
# download's data at the bottleneck, so the median and 95th percentile of their RTT minus
# the idle RTT is the queueing delay the transfer adds. linkemu's counters for the data
# direction give the packets the download sent and how many the full queue dropped (loss
# the transfer inflicted on itself) besides the random losses.
#
# Results: bench/results/udp_vs_tcp.csv (merged with earlier rows by transport and loss,
# unless --fresh), a table on stdout and bench/results/udp_vs_tcp.png.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: udp_vs_tcp.sh needs root (network namespaces, TUN devices); run it with sudo" >&2
  exit 1
fi

transports=tcp-cubic,tcp-bbr,udp
losses=0,1,2,5,10
size_mib=64
tcp_timeout=120
udp_timeout=120
boxsync_bin=
fresh=
repeat=1
results=
clock=reported
while [ $# -gt 0 ]; do
  case $1 in
    --transports) transports=$2; shift 2 ;;
    --losses) losses=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --tcp-timeout) tcp_timeout=$2; shift 2 ;;
    --udp-timeout) udp_timeout=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --boxsync-bin) boxsync_bin=$2; shift 2 ;;
    --fresh) fresh=1; shift ;;
    --results) results=$2; shift 2 ;;
    --clock) clock=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a transport_list <<< "$transports"
IFS=, read -r -a loss_list <<< "$losses"
for t in "${transport_list[@]}"; do
  case $t in tcp-cubic|tcp-bbr|udp) ;; *) echo "bench: unknown transport '$t'" >&2; exit 2 ;; esac
done
case $clock in reported|wall) ;; *) echo "bench: --clock is reported or wall, not '$clock'" >&2; exit 2 ;; esac
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad --repeat '$repeat'" >&2; exit 2; }
for l in "${loss_list[@]}"; do
  [[ $l =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench: bad loss percentage '$l'" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
root=$PWD
results=${results:-$root/bench/results}
mkdir -p "$results"
results=$(realpath "$results")
for tool in ip ping ss python3 flock; do
  command -v "$tool" >/dev/null || {
    echo "bench: $tool is missing (Debian: apt-get install iproute2 iputils-ping util-linux)" >&2
    exit 1
  }
done
python3 -c 'import matplotlib' 2>/dev/null || {
  echo "bench: installing matplotlib for the plot..." >&2
  python3 -m pip install --quiet matplotlib
}

if [ -z "$boxsync_bin" ]; then
  cargo build --release --quiet
  boxsync_bin=${CARGO_TARGET_DIR:-$root/target}/release/boxsync
fi
[ -x "$boxsync_bin" ] || { echo "bench: $boxsync_bin is not an executable file" >&2; exit 2; }
boxsync_bin=$(realpath "$boxsync_bin")
# In memory (tmpfs): the link is the subject, not the disk; on a disk, a busy neighbour
# (a build) can stall the download's final fsync for seconds.
work=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )/boxsync-linkbench-XXXXXX")
export EMU_LOG_DIR=$work
# shellcheck source=bench/emulated_link.sh
source "$root/bench/emulated_link.sh"
emu_build

server_pid=
client_pid=
ping_pid=
cleanup() {
  local p
  for p in "$client_pid" "$ping_pid" "$server_pid"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
  done
  for p in "$client_pid" "$ping_pid" "$server_pid"; do
    if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
  done
  emu_teardown
  [[ -n ${BENCH_KEEP_LOG:-} ]] && cp "$work/serve.log" "$BENCH_KEEP_LOG" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

src=$work/src
dst=$work/dst
mkdir -p "$src" "$dst"
export BX_SCRATCH=$work
# shellcheck source=bench/boxsync_cli.sh
source "$root/bench/boxsync_cli.sh"
bx_probe "$boxsync_bin"
form=$(bx_form "$boxsync_bin")
echo "bench: $(bx_describe "$boxsync_bin")" >&2
server_id=$(bx_init_box "$boxsync_bin" "$src" "$work/ident-src")
client_id=$(bx_init_box "$boxsync_bin" "$dst" "$work/ident-dst")
mapfile -t trust_args < <(bx_trust "$form" "$client_id")
echo "writing a ${size_mib} MiB random file..." >&2
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$src/big.bin"
size=$((size_mib * 1024 * 1024))
port=7878
peer=$EMU_ADDR_B:$port
peer_arg=$(bx_peer "$form" "$server_id" "$peer")
rows=$work/rows.csv
: > "$rows"

# Wall-clock time in microseconds (bash 5, no process started).
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
# A FIFO nobody writes to: `read -t` on it is a sleep that starts no process.
mkfifo "$work/nap"
exec {nap_fd}<> "$work/nap"

# Starts the serving box in bxb with the given extra options; waits until it serves.
start_server() {
  : > "$work/serve.out"
  ip netns exec "$EMU_NS_B" "$boxsync_bin" serve -d "$src" -l "$peer" "${trust_args[@]}" "$@" \
    > "$work/serve.out" 2>> "$work/serve.log" &
  server_pid=$!
  local _
  for _ in $(seq 100); do
    grep -q serving "$work/serve.out" && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: the serving box did not start, see $work/serve.log" >&2
  return 1
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# Bytes a TCP download in progress has delivered: what the receiver has acknowledged to the
# serving box (its socket's bytes_acked), exact to the byte; empty if not found.
tcp_acked_bytes() {
  ip netns exec "$EMU_NS_B" ss -tinH state established "( sport = :$port )" 2>/dev/null \
    | grep -o 'bytes_acked:[0-9]*' | cut -d: -f2 | sort -n | tail -n 1
}

# Bytes received so far by a download in progress: its partial file(s) under
# .boxsync/tmp, counting only allocated blocks in case the file was preallocated sparse.
partial_bytes() {
  local total=0 f apparent allocated
  for f in "$dst"/.boxsync/tmp/*; do
    [ -f "$f" ] || continue
    read -r apparent allocated < <(stat -c '%s %b*%B' "$f")
    allocated=$((allocated))
    total=$((total + (apparent < allocated ? apparent : allocated)))
  done
  echo "$total"
}

# One download: run_one TRANSPORT LOSS_PCT RUN. Appends a row to $rows.
run_one() {
  local transport=$1 loss=$2 run=$3 cc='' command limit
  case $transport in
    tcp-cubic) cc=cubic; command="download tcp big.bin"; limit=$tcp_timeout ;;
    tcp-bbr) cc=bbr; command="download tcp big.bin"; limit=$tcp_timeout ;;
    udp) command="download udp big.bin"; limit=$udp_timeout ;;
  esac
  local cc_args=()
  # The congestion control is set on both boxes: the serving box is the sender.
  [ -n "$cc" ] && cc_args=(--tcp-congestion "$cc")
  rm -rf "$dst/big.bin" "$dst/.boxsync/trash" "$dst/.boxsync/tmp"
  start_server "${cc_args[@]}"

  # Idle RTT first, then ping all through the download.
  ip netns exec "$EMU_NS_A" ping -n -c 20 -i 0.01 "$EMU_ADDR_B" > "$work/ping-idle.txt" 2>&1 || true
  ip netns exec "$EMU_NS_A" ping -n -i 0.01 -w $((limit + 30)) "$EMU_ADDR_B" > "$work/ping-busy.txt" 2>&1 &
  ping_pid=$!
  local before after t0 t1 status=ok bytes=
  before=$(emu_stats)
  t0=$(now_us)
  ip netns exec "$EMU_NS_A" "$boxsync_bin" -d "$dst" -p "$peer_arg" --json "${cc_args[@]}" -c "$command" \
    > "$work/client.json" 2> "$work/client.log" &
  client_pid=$!
  local deadline=$((t0 + limit * 1000000))
  # Polled every 10 ms without starting a process (the wall clock's resolution).
  while kill -0 "$client_pid" 2>/dev/null; do
    if [ "${EPOCHREALTIME/[.,]/}" -ge "$deadline" ]; then
      bytes=
      [ "$transport" != udp ] && bytes=$(tcp_acked_bytes)
      [ -n "$bytes" ] || bytes=$(partial_bytes)
      t1=$(now_us)
      status=timeout
      kill "$client_pid" 2>/dev/null || true
      break
    fi
    read -r -t 0.01 -u "$nap_fd" _ || true
  done
  local rc=0
  wait "$client_pid" 2>/dev/null || rc=$?
  client_pid=
  [ "$status" = timeout ] || t1=$(now_us)
  after=$(emu_stats)
  kill "$ping_pid" 2>/dev/null || true
  wait "$ping_pid" 2>/dev/null || true
  ping_pid=
  stop_server
  if [ "$status" = ok ] && [ "$rc" -ne 0 ]; then status=failed; fi

  python3 "$root/bench/udp_vs_tcp_report.py" row \
    --transport "$transport" --loss "$loss" --run "$run" --seed "$EMU_SEED" \
    --size "$size" --status "$status" --clock "$clock" \
    --client-json "$work/client.json" --client-log "$work/client.log" \
    --partial-bytes "${bytes:-0}" --wall-us "$((t1 - t0))" \
    --stats-before "$before" --stats-after "$after" \
    --ping-idle "$work/ping-idle.txt" --ping-busy "$work/ping-busy.txt" \
    --link "${EMU_RATE_MBIT} Mbit/s, ${EMU_DELAY_MS} ms each way, queue ${EMU_QUEUE_BYTES:-1 BDP}" \
    >> "$rows"
}

echo "link: ${EMU_RATE_MBIT} Mbit/s, ${EMU_DELAY_MS} ms each way, queue ${EMU_QUEUE_BYTES:-one BDP}, seed ${EMU_SEED}" >&2
base_seed=$EMU_SEED
for loss in "${loss_list[@]}"; do
  for run in $(seq "$repeat"); do
    EMU_SEED=$((base_seed + run - 1))
    emu_start "$(python3 -c "print($loss / 100)")"
    for transport in "${transport_list[@]}"; do
      run_one "$transport" "$loss" "$run"
    done
  done
done
EMU_SEED=$base_seed
emu_stop

merge=()
[ -z "$fresh" ] && [ -f "$results/udp_vs_tcp.csv" ] && merge=(--merge "$results/udp_vs_tcp.csv")
python3 "$root/bench/udp_vs_tcp_report.py" finish --rows "$rows" "${merge[@]}" \
  --csv "$results/udp_vs_tcp.csv" --png "$results/udp_vs_tcp.png"
