#!/usr/bin/env bash
# Benchmark (issue 21, "move only what changed"): boxsync's block-level delta downloads
# against rsync's delta, over the emulated long-distance link (bench/emulated_link.sh:
# 100 Mbit/s, 25 ms each way = 50 ms round trip, no loss) and, for one scenario, on
# loopback. Every scenario is measured for boxsync (one or two builds) and for rsync in the
# same run, the order of the tools flipping every round.
#
#   bench/delta.sh [--old-bin PATH] [--new-bin PATH] [--no-loopback] [SIZE_MIB] [RUNS]
#                                                  (defaults: 1024 MiB, 1 run; needs root)
#
#   --new-bin PATH   the build under test (default: this tree's release build, made here)
#   --old-bin PATH   a second build to alternate with it (a build without deltas moves the
#                    whole file every time); ratios new/old are then printed
#   --no-loopback    skip the loopback variant
#
# Issue 21's run, the build under test made beforehand:
#
#   sudo bench/delta.sh --new-bin /tmp/boxsync-delta 1024 3
#
# Scenarios (the file is SIZE_MIB of random bytes, "base"):
#
#   first     first copy into an empty destination
#   overwrite 1 MiB overwritten at offset SIZE/2 (dd conv=notrunc); the destination holds base
#   append    1 MiB appended; the destination holds base
#   rename    the serving side holds base as renamed.bin instead of big.bin; the destination
#             holds big.bin. boxsync downloads renamed.bin (its old name stays); rsync syncs
#             the folder: `rsync -a --fuzzy --delete-after SRC/ DST/` (--fuzzy takes a file
#             of the same size and mtime as the basis; --delete-after, since a plain --delete
#             may delete that basis before it is used)
#   insert    10 random bytes inserted at offset 100; the destination holds base. boxsync
#             matches blocks at their own offset only (1 MiB blocks for 1 GiB), rsync rolls:
#             what rolling matching would be worth
#   resume    a download into an empty destination is stopped when half the file has
#             arrived, then run again. boxsync: the client is killed with SIGKILL when the
#             allocated blocks (stat %b x 512) under DEST/.boxsync/tmp/resume reach half the
#             file. rsync --partial: stopped with SIGTERM when its temporary file reaches
#             half (rsync keeps a partial file only when it can run its exit handler: after
#             SIGKILL its receiver lives on and the rerun does not use its temporary file,
#             so SIGTERM is rsync's best case). Bytes on the wire: both runs; time: the rerun
#             only; goal: boxsync's wire bytes over both runs <= 1.1 x the file
#   loopback  the overwrite scenario on 127.0.0.1 in this namespace (goal: boxsync under 1 s)
#
# "The destination holds base" means what an earlier download left there: for boxsync, a
# boxsync download of base from a second serving box in the client's own namespace (over
# its loopback, not counted), so that the client's index knows the file's hash and blocks
# (a copied file would not be known: the index keys on inode and ctime); for rsync, cp -a
# of base (rsync keeps no state; mtime and size match). Each download runs against a
# serving box that stays up for the round (started with an empty state at the start of
# each round, so that "first" hashes while sending): the changed versions are new files
# (hard links from $work/ver), which it has not hashed before, like rsync's daemon.
#
# The link: the serving boxes and rsync's daemon (`rsync --daemon`, the module's path the
# serving folder, as bench/tcp_download.sh runs one) are in namespace bxb (10.201.0.2),
# the clients in bxa (10.201.0.1); linkemu is started once for the run. Bytes on the wire:
# linkemu's counters (emu_stats) read before and after each command, IP packets with their
# headers, both directions. Also recorded: boxsync's "transferred" and "reused" (its JSON),
# rsync's --stats (Total bytes received and sent, Literal data, Matched data). On loopback
# there is no counter of this run's own packets: the "wire" there is boxsync's
# "transferred" and rsync's total bytes received + sent.
#
# The time is the wall clock of the whole client command (`ip netns exec bxa ...` on the
# link); every copy is compared with its source (cmp) after the clock stops, and a boxsync
# download must report a TCP transfer. Medians of RUNS rounds; rows.jsonl keeps every run.
# All folders are on tmpfs (/dev/shm): the link is the subject, not the disk. The command
# line of each build is probed (bench/boxsync_cli.sh); rsync is installed through
# bench/need.py when missing. Needs python3, ip, flock (bench/emulated_link.sh).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
old_bin=
new_bin=
loopback=1
positional=()
while [ $# -gt 0 ]; do
  case $1 in
    --old-bin) old_bin=${2:?--old-bin needs a path}; shift 2 ;;
    --new-bin) new_bin=${2:?--new-bin needs a path}; shift 2 ;;
    --no-loopback) loopback=; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ "${#positional[@]}" -le 2 ] || { echo "bench: too many arguments (see --help)" >&2; exit 2; }
size_mib=${positional[0]:-1024}
runs=${positional[1]:-1}
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad SIZE_MIB '$size_mib'" >&2; exit 2; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad RUNS '$runs'" >&2; exit 2; }
[ "$size_mib" -ge 4 ] || { echo "bench: SIZE_MIB must be at least 4" >&2; exit 2; }
for b in "$old_bin" "$new_bin"; do
  if [ -n "$b" ] && [ ! -x "$b" ]; then echo "bench: $b is not an executable file" >&2; exit 2; fi
done
[ -z "$old_bin" ] || old_bin=$(realpath "$old_bin")
[ -z "$new_bin" ] || new_bin=$(realpath "$new_bin")
if [ "$(id -u)" -ne 0 ]; then
  echo "bench: delta.sh needs root (network namespaces, TUN devices); run it with sudo" >&2
  exit 1
fi

cd "$(dirname "$0")/.."
root=$PWD
for tool in python3 ip flock cmp; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
python3 -c "import sys; sys.path.insert(0, '$root/bench'); from need import need; need('rsync')"

if [ -z "$new_bin" ]; then
  cargo build --release --quiet
  new_bin=${CARGO_TARGET_DIR:-$root/target}/release/boxsync
fi
tags=(new)
declare -A bins=([new]=$new_bin)
if [ -n "$old_bin" ]; then tags=(old new); bins[old]=$old_bin; fi
# The copy each run uses: the build under test may be rebuilt while this runs.
work=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )/boxsync-delta-XXXXXX")
declare -A described_bin=()
for tag in "${tags[@]}"; do
  cp "${bins[$tag]}" "$work/boxsync-$tag"
  described_bin[$tag]=${bins[$tag]}
  bins[$tag]=$work/boxsync-$tag
done
export EMU_LOG_DIR=$work
# shellcheck source=bench/emulated_link.sh
source "$root/bench/emulated_link.sh"

declare -A pids=()
cleanup() {
  local k
  for k in "${!pids[@]}"; do kill "${pids[$k]}" 2>/dev/null || true; done
  for k in "${!pids[@]}"; do wait "${pids[$k]}" 2>/dev/null || true; done
  emu_teardown
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export BX_SCRATCH=$work
# shellcheck source=bench/boxsync_cli.sh
source "$root/bench/boxsync_cli.sh"

now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
seconds_since() { local d=$(($(now_us) - $1)); printf '%d.%06d\n' $((d / 1000000)) $((d % 1000000)); }
# A FIFO nobody writes to: `read -t` on it is a sleep that starts no process.
mkfifo "$work/nap"
exec {nap_fd}<> "$work/nap"
nap() { read -r -t "$1" -u "$nap_fd" _ || true; }
report() { python3 "$root/bench/delta_report.py" "$@"; }

size=$((size_mib * 1024 * 1024))
mib=$((1024 * 1024))
echo "bench: writing the ${size_mib} MiB file and its changed versions..." >&2
mkdir -p "$work"/ver/{base,overwrite,append,insert}
head -c "$size" /dev/urandom > "$work/ver/base/big.bin"
cp "$work/ver/base/big.bin" "$work/ver/overwrite/big.bin"
dd if=/dev/urandom of="$work/ver/overwrite/big.bin" bs=1M seek=$((size_mib / 2)) count=1 conv=notrunc status=none
cp "$work/ver/base/big.bin" "$work/ver/append/big.bin"
head -c "$mib" /dev/urandom >> "$work/ver/append/big.bin"
{ head -c 100 "$work/ver/base/big.bin"; head -c 10 /dev/urandom; tail -c +101 "$work/ver/base/big.bin"; } \
  > "$work/ver/insert/big.bin"
touch -d '-1 hour' "$work/ver/base/big.bin"   # older than every changed version

# What the serving side holds in each scenario: "NAME VERSION" (a hard link to ver/VERSION/big.bin).
declare -A src_of=([first]="big.bin base" [overwrite]="big.bin overwrite" [append]="big.bin append"
                   [rename]="renamed.bin base" [insert]="big.bin insert" [resume]="big.bin base")
scenarios=(first overwrite append rename insert resume)
tools=("${tags[@]}" rsync)

# Per build: its serving folder, its priming folder (base, for the priming box), its client
# folder, the IDs; whether it takes --no-discovery (its announcements would cross the link).
declare -A form=() server_id=() prime_id=() client_id=() nodisc=()
for tag in "${tags[@]}"; do
  bin=${bins[$tag]}
  bx_probe "$bin"
  form[$tag]=$(bx_form "$bin")
  echo "bench: $tag = $(bx_describe "$bin")" >&2
  server_id[$tag]=$(bx_init_box "$bin" "$work/src-$tag" "$work/ident-src-$tag")
  prime_id[$tag]=$(bx_init_box "$bin" "$work/prime-$tag" "$work/ident-prime-$tag")
  client_id[$tag]=$(bx_init_box "$bin" "$work/dst-$tag" "$work/ident-dst-$tag")
  ln "$work/ver/base/big.bin" "$work/prime-$tag/big.bin"
  nodisc[$tag]=
  "$bin" --help 2>/dev/null | grep -q -- --no-discovery && nodisc[$tag]=--no-discovery
done
mkdir -p "$work/src-rsync" "$work/dst-rsync"
cat > "$work/rsyncd.conf" <<EOF
use chroot = no
uid = $(id -u)
gid = $(id -g)
[src]
  path = $work/src-rsync
  read only = yes
EOF

# Where the measurements run: "emu" (client in bxa, servers in bxb) or "lo" (127.0.0.1).
phase=
srv_ns=()
cli_ns=()
srv_addr=
declare -A port=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a boxsync serving box: start_box KEY TAG DIR SNAP ADDR NS... (waits until it serves).
start_box() {
  local key=$1 tag=$2 dir=$3 snap=$4 addr=$5 trust=() _
  shift 5
  mapfile -t trust < <(bx_trust "${form[$tag]}" "${client_id[$tag]}")
  bx_reset_state "$dir" "$snap"
  : > "$work/$key.out"
  "$@" "${bins[$tag]}" serve -d "$dir" -l "$addr" "${trust[@]}" ${nodisc[$tag]} \
    > "$work/$key.out" 2>> "$work/$key.log" &
  pids[$key]=$!
  for _ in $(seq 100); do
    grep -q serving "$work/$key.out" && return 0
    kill -0 "${pids[$key]}" 2>/dev/null || break
    nap 0.1
  done
  echo "bench: the serving box $key did not start:" >&2
  tail -n 5 "$work/$key.log" >&2
  return 1
}

stop_proc() {
  local key=$1
  [ -n "${pids[$key]:-}" ] || return 0
  kill "${pids[$key]}" 2>/dev/null || true
  wait "${pids[$key]}" 2>/dev/null || true
  unset "pids[$key]"
}

start_rsyncd() {
  "${srv_ns[@]}" rsync --daemon --no-detach --config="$work/rsyncd.conf" --port="$rsync_port" \
    --address="$srv_addr" 2>> "$work/rsyncd.log" &
  pids[rsyncd]=$!
  local _
  for _ in $(seq 100); do
    "${cli_ns[@]}" rsync "rsync://$srv_addr:$rsync_port/" >/dev/null 2>&1 && return 0
    nap 0.1
  done
  echo "bench: the rsync daemon did not start" >&2
  return 1
}

# Starts the phase's daemons: every build's serving box and priming box, rsync's daemon.
start_phase() {
  phase=$1
  local tag i=0
  if [ "$phase" = emu ]; then
    # The namespaces are this run's own: fixed ports.
    srv_ns=(ip netns exec "$EMU_NS_B"); cli_ns=(ip netns exec "$EMU_NS_A"); srv_addr=$EMU_ADDR_B
    rsync_port=8873
    for tag in "${tags[@]}"; do
      port[src-$tag]=$((7878 + i)); port[prime-$tag]=$((7978 + i)); i=$((i + 1))
    done
  else
    srv_ns=(); cli_ns=(); srv_addr=127.0.0.1
    rsync_port=$(free_port)
    for tag in "${tags[@]}"; do port[src-$tag]=$(free_port); port[prime-$tag]=$(free_port); done
  fi
  for tag in "${tags[@]}"; do
    start_box "prime-$tag" "$tag" "$work/prime-$tag" "$work/ident-prime-$tag" \
      "127.0.0.1:${port[prime-$tag]}" "${cli_ns[@]}"
  done
  start_rsyncd
}

# Restarts every build's serving box with an empty state (a round starts cold).
restart_servers() {
  local tag
  for tag in "${tags[@]}"; do
    stop_proc "src-$tag"
    start_box "src-$tag" "$tag" "$work/src-$tag" "$work/ident-src-$tag" \
      "$srv_addr:${port[src-$tag]}" "${srv_ns[@]}"
  done
}

stop_phase() {
  local k
  for k in "${!pids[@]}"; do stop_proc "$k"; done
}

# Puts scenario SCEN's file into serving folder DIR (nothing else but .boxsync).
set_source() {
  local dir=$1 name version
  read -r name version <<< "${src_of[$2]}"
  find "$dir" -mindepth 1 -maxdepth 1 ! -name .boxsync -exec rm -rf {} +
  ln "$work/ver/$version/big.bin" "$dir/$name"
}

# The destination of TOOL holding base as an earlier download left it (see the header).
prime() {
  local tool=$1
  if [ "$tool" = rsync ]; then
    rm -rf "$work/dst-rsync"; mkdir -p "$work/dst-rsync"
    cp -a "$work/ver/base/big.bin" "$work/dst-rsync/"
    return
  fi
  local peer
  peer=$(bx_peer "${form[$tool]}" "${prime_id[$tool]}" "127.0.0.1:${port[prime-$tool]}")
  bx_reset_box "$work/dst-$tool" "$work/ident-dst-$tool"
  "${cli_ns[@]}" "${bins[$tool]}" -d "$work/dst-$tool" -p "$peer" ${nodisc[$tool]} --json \
    -c "download tcp big.bin" > "$work/prime.json" 2> "$work/prime.err" \
    || { echo "bench: priming $tool failed: $(tail -c 600 "$work/prime.json") $(tail -n 3 "$work/prime.err")" >&2; return 1; }
  cmp "$work/ver/base/big.bin" "$work/dst-$tool/big.bin" || { echo "bench: priming $tool: the copy differs" >&2; return 1; }
}

wire() { if [ "$phase" = emu ]; then emu_stats; else echo '{}'; fi; }

# Allocated bytes of the files under DIR whose names match GLOB (stat %b x 512).
allocated() {
  local dir=$1 glob=$2
  [ -d "$dir" ] || { echo 0; return; }
  find "$dir" -type f -name "$glob" -printf '%b\n' 2>/dev/null | awk '{s += $1} END {print s * 512 + 0}'
}

# The client command of TOOL for SCEN: prints nothing, sets cmd=(...).
client_cmd() {
  local tool=$1 scen=$2 name
  read -r name _ <<< "${src_of[$scen]}"
  if [ "$tool" = rsync ]; then
    local url=rsync://$srv_addr:$rsync_port/src
    case $scen in
      rename) cmd=(rsync -a --stats --fuzzy --delete-after "$url/" "$work/dst-rsync/") ;;
      resume) cmd=(rsync -a --stats --partial "$url/big.bin" "$work/dst-rsync/") ;;
      *) cmd=(rsync -a --stats "$url/big.bin" "$work/dst-rsync/") ;;
    esac
  else
    local peer
    peer=$(bx_peer "${form[$tool]}" "${server_id[$tool]}" "$srv_addr:${port[src-$tool]}")
    cmd=("${bins[$tool]}" -d "$work/dst-$tool" -p "$peer" ${nodisc[$tool]} --json -c "download tcp $name")
  fi
}

# The first half of a resume: starts the download, stops it at half the file. Sets frac,
# the fraction of the file that had arrived, and kept, the fraction the rerun finds.
interrupted_run() {
  local tool=$1 dir glob sig got=0 half=$((size / 2))
  if [ "$tool" = rsync ]; then dir=$work/dst-rsync; glob='.big.bin.*'; sig=TERM
  else dir=$work/dst-$tool/.boxsync/tmp/resume; glob='*'; sig=KILL; fi
  "${cli_ns[@]}" "${cmd[@]}" > "$work/out-interrupted" 2> "$work/err-interrupted" &
  pids[client]=$!
  while kill -0 "${pids[client]}" 2>/dev/null; do
    got=$(allocated "$dir" "$glob")
    [ "$got" -ge "$half" ] && break
    nap 0.01
  done
  kill -"$sig" "${pids[client]}" 2>/dev/null \
    || { echo "bench: the $tool download ended before half the file had arrived" >&2; return 1; }
  wait "${pids[client]}" 2>/dev/null || true
  unset "pids[client]"
  # rsync's receiver is a child: it ends on its own once its parent has stopped it.
  if [ "$tool" = rsync ]; then
    local _
    for _ in $(seq 200); do pgrep -f -- "--partial rsync://$srv_addr:$rsync_port/" >/dev/null || break; nap 0.05; done
  fi
  frac=$(python3 -c "print(f'{$got / $size:.3f}')")
  # What the rerun can start from: the resume folder; rsync's partial file (renamed to
  # big.bin by its exit handler).
  if [ "$tool" = rsync ]; then got=$(allocated "$dir" big.bin); else got=$(allocated "$dir" "$glob"); fi
  kept=$(python3 -c "print(f'{$got / $size:.3f}')")
}

# One measurement: measure ROUND TOOL SCEN. Appends a row to $work/rows.jsonl.
measure() {
  local round=$1 tool=$2 scen=$3 name src t0 secs before after first_before= first_after= frac= kept=
  read -r name _ <<< "${src_of[$scen]}"
  if [ "$tool" = rsync ]; then src=$work/src-rsync; else src=$work/src-$tool; fi
  set_source "$src" "$scen"
  case $scen in
    first|resume)
      if [ "$tool" = rsync ]; then rm -rf "$work/dst-rsync"; mkdir -p "$work/dst-rsync"
      else bx_reset_box "$work/dst-$tool" "$work/ident-dst-$tool"; fi ;;
    *) prime "$tool" ;;
  esac
  client_cmd "$tool" "$scen"
  if [ "$scen" = resume ]; then
    first_before=$(wire)
    interrupted_run "$tool"
    first_after=$(wire)
  fi
  before=$(wire)
  t0=$(now_us)
  if ! "${cli_ns[@]}" "${cmd[@]}" > "$work/out" 2> "$work/err"; then
    echo "bench: $tool $scen ($phase) failed: $(tail -c 600 "$work/out") $(tail -n 3 "$work/err")" >&2
    return 1
  fi
  secs=$(seconds_since "$t0")
  after=$(wire)
  local dst
  if [ "$tool" = rsync ]; then dst=$work/dst-rsync; else dst=$work/dst-$tool; fi
  cmp "$src/$name" "$dst/$name" || { echo "bench: the $tool copy ($scen, $phase) differs" >&2; return 1; }
  if [ "$tool" != rsync ]; then
    grep -q '"transport":"tcp"' "$work/out" \
      || { echo "bench: $tool $scen: no TCP transfer reported: $(head -c 600 "$work/out")" >&2; return 1; }
  fi
  report row --phase "$phase" --round "$round" --tool "$tool" --scenario "$scen" --seconds "$secs" \
    --before "$before" --after "$after" --output "$work/out" \
    ${frac:+--first-before "$first_before" --first-after "$first_after" --stopped-at "$frac" --kept "$kept"} \
    >> "$work/rows.jsonl"
  echo "bench: $phase round $round $scen $tool: $(tail -n 1 "$work/rows.jsonl" | report brief)" >&2
}

run_rounds() {
  local list=("$@") i scen tool order
  for i in $(seq "$runs"); do
    restart_servers
    order=("${tools[@]}")
    if [ $((i % 2)) -eq 0 ]; then
      order=(); for ((k = ${#tools[@]} - 1; k >= 0; k--)); do order+=("${tools[$k]}"); done
    fi
    for scen in "${list[@]}"; do
      for tool in "${order[@]}"; do measure "$i" "$tool" "$scen"; done
    done
  done
}

steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }
steal0=$(steal_ticks)
started=$(date -u +%FT%TZ)
: > "$work/rows.jsonl"

emu_build
emu_start 0
echo "bench: link ${EMU_RATE_MBIT} Mbit/s, ${EMU_DELAY_MS} ms each way, queue ${EMU_QUEUE_BYTES:-one BDP}" >&2
start_phase emu
run_rounds "${scenarios[@]}"
stop_phase
emu_teardown

if [ -n "$loopback" ]; then
  start_phase lo
  run_rounds overwrite
  stop_phase
fi
steal=$(( $(steal_ticks) - steal0 ))

describe=()
for tag in "${tags[@]}"; do describe+=("$tag=${described_bin[$tag]} ($(bx_form "${bins[$tag]}") CLI)"); done
machine="$(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), boxsync $(git -C "$root" rev-parse --short HEAD)"
report table --rows "$work/rows.jsonl" --size "$size" --runs "$runs" --started "$started" \
  --steal "$(python3 -c "print(f'{$steal / $(getconf CLK_TCK):.2f}')")" \
  --link "${EMU_RATE_MBIT} Mbit/s, ${EMU_DELAY_MS} ms each way, queue ${EMU_QUEUE_BYTES:-one BDP}" \
  --machine "$machine" "${describe[@]}"
if [ -n "${BENCH_KEEP_ROWS:-}" ]; then cp "$work/rows.jsonl" "$BENCH_KEEP_ROWS"; fi
