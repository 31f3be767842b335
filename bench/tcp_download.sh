#!/usr/bin/env bash
# Benchmark: a verified boxsync TCP download of one large file on loopback, one or two
# boxsync builds alternated in one run, against rsync measured in the same run on the same
# file: from an rsync daemon (plain, and with --fsync), and over ssh (`rsync -e ssh`,
# OpenSSH, cipher aes128-gcm@openssh.com, from a private sshd this script starts).
#
#   bench/tcp_download.sh [--old-bin PATH] [--new-bin PATH] [--no-ssh] [SIZE_MIB] [RUNS]
#                                                  (defaults: 1024 MiB, 3 runs)
#
#   --new-bin PATH   the build under test (default: this tree's release build, made here)
#   --old-bin PATH   a second build to alternate with it; ratios new/old are then printed
#   --no-ssh         skip the `rsync -e ssh` reference (and its install, and its sshd)
#
# Issue 18's speed goal (TCP under TLS 1.3 against the unencrypted 6e35d9f, and against
# rsync over ssh), from the TLS build's tree, the old build made once beforehand:
#
#   git worktree add /work/wt-old 6e35d9f
#   (cd /work/wt-old && CARGO_TARGET_DIR=/work/wt-old/target cargo build --release)
#   bench/tcp_download.sh --old-bin /work/wt-old/target/release/boxsync 1024 5
#
# Goals: "throughput new/old" >= 0.8 and "new vs rsync -e ssh" >= 2 (the warm rows: the
# serving box's digests cached; the cold rows hash while sending). Without --old-bin the
# script measures one build, as it always did: `bench/tcp_download.sh 1024 3`.
#
# Each round, for each build in turn (the order flips every round): the serving box is
# started with an empty state (no hash cache), the file is downloaded into an empty
# destination "cold" (the box hashes while sending), then again "warm" (digests cached);
# then rsync from the daemon, with --fsync, and over ssh, each into an empty folder. The
# time is the wall clock of the whole command (process start to exit); every copy is
# compared with the source (cmp) after its clock stops. Medians of RUNS rounds, and every
# run. The file sits in the page cache (written just before, read by every run); each
# build serves it from its own folder through a hard link to the same file.
#
# The command line of each build is probed (bench/boxsync_cli.sh): a build with the `id`
# subcommand (issue 18) gets `-p SERVER_ID@127.0.0.1:PORT` on the client and
# `--trust CLIENT_ID` on the serving box, each box keeping its own ID across the rounds;
# an older build gets `-p 127.0.0.1:PORT`.
#
# The ssh reference: `apt-get install -y openssh-server rsync` when sshd or rsync is
# missing (root only). The script makes a host key and a client key in its temporary
# folder and runs /usr/sbin/sshd on a free loopback port with its own configuration file
# (-f), accepting that key only, with aes128-gcm@openssh.com the only cipher; the client
# runs `ssh -F /dev/null` with its own known_hosts. The machine's ssh configuration and
# keys are not used or changed. The one thing outside the temporary folder: sshd run as
# root needs /run/sshd, which is made if missing and removed on exit if it was made here.
# Needs python3.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
old_bin=
new_bin=
ssh_ref=1
positional=()
while [ $# -gt 0 ]; do
  case $1 in
    --old-bin) old_bin=${2:?--old-bin needs a path}; shift 2 ;;
    --new-bin) new_bin=${2:?--new-bin needs a path}; shift 2 ;;
    --no-ssh) ssh_ref=; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ "${#positional[@]}" -le 2 ] || { echo "bench: too many arguments (see --help)" >&2; exit 2; }
size_mib=${positional[0]:-1024}
runs=${positional[1]:-3}
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad SIZE_MIB '$size_mib'" >&2; exit 2; }
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad RUNS '$runs'" >&2; exit 2; }
for b in "$old_bin" "$new_bin"; do
  if [ -n "$b" ] && [ ! -x "$b" ]; then echo "bench: $b is not an executable file" >&2; exit 2; fi
done
[ -z "$old_bin" ] || old_bin=$(realpath "$old_bin")
[ -z "$new_bin" ] || new_bin=$(realpath "$new_bin")

cd "$(dirname "$0")/.."
root=$PWD
command -v python3 >/dev/null || { echo "bench: python3 is missing" >&2; exit 1; }

# What the references need, installed when missing.
missing=()
command -v rsync >/dev/null || missing+=(rsync)
if [ -n "$ssh_ref" ]; then
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  { command -v ssh && command -v ssh-keygen; } >/dev/null || missing+=(openssh-client)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: ${missing[*]} missing: run 'apt-get install -y ${missing[*]}' as root (or --no-ssh)" >&2
    exit 1
  fi
  echo "bench: installing ${missing[*]} (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || { echo "bench: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

if [ -z "$new_bin" ]; then
  cargo build --release --quiet
  new_bin=${CARGO_TARGET_DIR:-$root/target}/release/boxsync
fi
tags=(new)
declare -A bins=([new]=$new_bin)
if [ -n "$old_bin" ]; then tags=(old new); bins[old]=$old_bin; fi

work=$(mktemp -d /tmp/boxsync-bench-XXXXXX)
server_pid=
rsyncd_pid=
sshd_pid=
made_privsep=
cleanup() {
  local p
  for p in "$server_pid" "$rsyncd_pid" "$sshd_pid"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
  done
  for p in "$server_pid" "$rsyncd_pid" "$sshd_pid"; do
    if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
  done
  if [ -n "$made_privsep" ]; then rmdir /run/sshd 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export BX_SCRATCH=$work
# shellcheck source=bench/boxsync_cli.sh
source "$root/bench/boxsync_cli.sh"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
seconds_since() { local d=$(($(now_us) - $1)); printf '%d.%06d\n' $((d / 1000000)) $((d % 1000000)); }

mkdir -p "$work/data"
echo "bench: writing a ${size_mib} MiB random file..." >&2
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/data/big.bin"

# Per build: its serving folder (a hard link to the file), its client folder, their IDs.
declare -A form=() port=() server_id=() client_id=()
for tag in "${tags[@]}"; do
  bin=${bins[$tag]}
  bx_probe "$bin"
  form[$tag]=$(bx_form "$bin")
  echo "bench: $tag = $(bx_describe "$bin")" >&2
  mkdir -p "$work/src-$tag"
  ln "$work/data/big.bin" "$work/src-$tag/big.bin"
  server_id[$tag]=$(bx_init_box "$bin" "$work/src-$tag" "$work/ident-src-$tag")
  client_id[$tag]=$(bx_init_box "$bin" "$work/dst-$tag" "$work/ident-dst-$tag")
  port[$tag]=$(free_port)
done

# Starts build TAG's serving box with an empty state (cold: no cached digests).
start_server() {
  local tag=$1 trust=() _
  mapfile -t trust < <(bx_trust "${form[$tag]}" "${client_id[$tag]}")
  bx_reset_state "$work/src-$tag" "$work/ident-src-$tag"
  : > "$work/serve-$tag.out"
  "${bins[$tag]}" serve -d "$work/src-$tag" -l "127.0.0.1:${port[$tag]}" "${trust[@]}" \
    > "$work/serve-$tag.out" 2>> "$work/serve-$tag.log" &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q serving "$work/serve-$tag.out" && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: the $tag serving box did not start:" >&2
  tail -n 5 "$work/serve-$tag.log" >&2
  return 1
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# One download by build TAG into its emptied folder; prints the seconds.
run_boxsync() {
  local tag=$1 dst t0 peer
  dst=$work/dst-$tag
  peer=$(bx_peer "${form[$tag]}" "${server_id[$tag]}" "127.0.0.1:${port[$tag]}")
  bx_reset_box "$dst" "$work/ident-dst-$tag"
  t0=$(now_us)
  if ! "${bins[$tag]}" -d "$dst" -p "$peer" --json -c "download tcp big.bin" > "$work/box.json" 2> "$work/box.err"; then
    echo "bench: the $tag download failed: $(tail -c 600 "$work/box.json") $(tail -n 3 "$work/box.err")" >&2
    return 1
  fi
  seconds_since "$t0"
  grep -q '"transport":"tcp"' "$work/box.json" \
    || { echo "bench: the $tag download did not report a TCP transfer: $(head -c 600 "$work/box.json")" >&2; return 1; }
  cmp "$work/data/big.bin" "$dst/big.bin" || { echo "bench: the $tag copy differs" >&2; return 1; }
}

# The rsync daemon.
rsync_port=$(free_port)
cat > "$work/rsyncd.conf" <<EOF
use chroot = no
# As whoever runs the bench (a root daemon would otherwise drop to nobody, who cannot read
# the private work folder).
uid = $(id -u)
gid = $(id -g)
[src]
  path = $work/data
  read only = yes
EOF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port="$rsync_port" --address=127.0.0.1 &
rsyncd_pid=$!
for _ in $(seq 100); do rsync "rsync://127.0.0.1:$rsync_port/" >/dev/null 2>&1 && break; sleep 0.1; done
rsync "rsync://127.0.0.1:$rsync_port/" >/dev/null || { echo "bench: the rsync daemon did not start" >&2; exit 1; }

# The private sshd, for `rsync -e ssh`.
ssh_cmd=
if [ -n "$ssh_ref" ]; then
  sshd_dir=$work/ssh
  mkdir -m 700 "$sshd_dir"
  ssh-keygen -q -t ed25519 -N '' -C boxsync-bench-host -f "$sshd_dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -C boxsync-bench-client -f "$sshd_dir/client_key"
  cp "$sshd_dir/client_key.pub" "$sshd_dir/authorized_keys"
  ssh_port=$(free_port)
  ssh_user=$(id -un)
  cat > "$sshd_dir/sshd_config" <<EOF
ListenAddress 127.0.0.1:$ssh_port
HostKey $sshd_dir/host_key
PidFile $sshd_dir/sshd.pid
AuthorizedKeysFile $sshd_dir/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers $ssh_user
StrictModes no
Ciphers aes128-gcm@openssh.com
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY no
PrintMotd no
LogLevel ERROR
EOF
  echo "[127.0.0.1]:$ssh_port $(cat "$sshd_dir/host_key.pub")" > "$sshd_dir/known_hosts"
  if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
    mkdir -m 755 /run/sshd
    made_privsep=1
  fi
  /usr/sbin/sshd -D -e -f "$sshd_dir/sshd_config" 2> "$sshd_dir/sshd.log" &
  sshd_pid=$!
  ssh_cmd="ssh -F /dev/null -p $ssh_port -i $sshd_dir/client_key -o IdentitiesOnly=yes -o BatchMode=yes"
  ssh_cmd+=" -o UserKnownHostsFile=$sshd_dir/known_hosts -o GlobalKnownHostsFile=/dev/null"
  ssh_cmd+=" -o StrictHostKeyChecking=yes -o Compression=no -o LogLevel=ERROR -c aes128-gcm@openssh.com"
  for _ in $(seq 100); do $ssh_cmd "$ssh_user@127.0.0.1" true 2>/dev/null && break; sleep 0.1; done
  $ssh_cmd "$ssh_user@127.0.0.1" true \
    || { echo "bench: the private sshd did not let us in:" >&2; cat "$sshd_dir/sshd.log" >&2; exit 1; }
  cipher=$($ssh_cmd -v "$ssh_user@127.0.0.1" true 2>&1 | grep -o 'server->client cipher: [^ ]*' | head -n 1 || true)
  [[ $cipher == *aes128-gcm@openssh.com ]] \
    || { echo "bench: ssh did not negotiate aes128-gcm@openssh.com ($cipher)" >&2; exit 1; }
  t0=$(now_us)
  $ssh_cmd "$ssh_user@127.0.0.1" true
  login=$(seconds_since "$t0")
  echo "bench: private sshd on 127.0.0.1:$ssh_port ($(/usr/sbin/sshd -V 2>&1 | head -n 1 || true); $cipher;" \
    "one 'ssh true' takes ${login}s, part of every rsync -e ssh time)" >&2
fi

# One rsync into an emptied folder: run_rsync daemon|fsync|ssh; prints the seconds.
run_rsync() {
  local kind=$1 dst=$work/dst-rsync t0
  rm -rf "$dst"; mkdir -p "$dst"
  t0=$(now_us)
  case $kind in
    daemon) rsync -a "rsync://127.0.0.1:$rsync_port/src/big.bin" "$dst/" ;;
    fsync) rsync -a --fsync "rsync://127.0.0.1:$rsync_port/src/big.bin" "$dst/" ;;
    ssh) rsync -a -e "$ssh_cmd" "$ssh_user@127.0.0.1:$work/data/big.bin" "$dst/" ;;
  esac
  seconds_since "$t0"
  cmp "$work/data/big.bin" "$dst/big.bin" || { echo "bench: the rsync ($kind) copy differs" >&2; return 1; }
}

steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }
steal0=$(steal_ticks)
started=$(date -u +%FT%TZ)
: > "$work/times"
for i in $(seq "$runs"); do
  order=("${tags[@]}")
  if [ $((i % 2)) -eq 0 ] && [ "${#tags[@]}" -eq 2 ]; then order=(new old); fi
  line="round $i:"
  for tag in "${order[@]}"; do
    start_server "$tag"
    cold=$(run_boxsync "$tag")
    warm=$(run_boxsync "$tag")
    stop_server
    echo "$tag-cold $cold" >> "$work/times"
    echo "$tag-warm $warm" >> "$work/times"
    line+=" $tag cold ${cold}s warm ${warm}s;"
  done
  for kind in daemon fsync ${ssh_ref:+ssh}; do
    t=$(run_rsync "$kind")
    echo "rsync-$kind $t" >> "$work/times"
    line+=" rsync-$kind ${t}s"
  done
  echo "$line" >&2
done
steal=$(( $(steal_ticks) - steal0 ))

describe=()
for tag in "${tags[@]}"; do describe+=("$tag=${bins[$tag]} (${form[$tag]} CLI)"); done
python3 - "$work/times" "$size_mib" "$runs" "$started" "$steal" "$(getconf CLK_TCK)" "${describe[@]}" <<'EOF'
import statistics, sys
path, mib, runs, started, steal, hz, *builds = sys.argv[1:]
mib = int(mib)
times = {}
for line in open(path):
    name, t = line.split()
    times.setdefault(name, []).append(float(t))
med = {k: statistics.median(v) for k, v in times.items()}
print(f"file: {mib} MiB on loopback; {runs} rounds from {started}; medians (every run in brackets); "
      f"steal {int(steal) / int(hz):.2f} CPU-s over the run")
for b in builds:
    print(f"  {b}")
label = {"rsync-daemon": "rsync (daemon, loopback)", "rsync-fsync": "rsync --fsync (daemon)",
         "rsync-ssh": "rsync -e ssh (aes128-gcm)"}
for tag in ("old", "new"):
    for kind in ("cold", "warm"):
        label[f"{tag}-{kind}"] = f"boxsync {tag}, {kind}"
for name in label:
    if name in med:
        runs_txt = " ".join(f"{t:.3f}" for t in times[name])
        print(f"{label[name]:28} {med[name]:7.3f} s  {mib / med[name]:7.0f} MiB/s   [{runs_txt}]")
print("ratios of throughput (reference time / boxsync time; > 1: boxsync faster):")
for kind in ("cold", "warm"):
    new = med[f"new-{kind}"]
    parts = []
    if "old-cold" in med:
        parts.append(f"new/old {med[f'old-{kind}'] / new:.2f} (goal >= 0.8)")
    if "rsync-ssh" in med:
        parts.append(f"new vs rsync -e ssh {med['rsync-ssh'] / new:.2f} (goal >= 2)")
    parts.append(f"new vs rsync {med['rsync-daemon'] / new:.2f}")
    parts.append(f"vs rsync --fsync {med['rsync-fsync'] / new:.2f}")
    if "old-cold" in med:
        old = med[f"old-{kind}"]
        parts.append(f"old vs rsync {med['rsync-daemon'] / old:.2f}")
        if "rsync-ssh" in med:
            parts.append(f"old vs rsync -e ssh {med['rsync-ssh'] / old:.2f}")
    print(f"  {kind}: " + ", ".join(parts))
print("(boxsync flushes to disk before it renames the file into place, like rsync --fsync)")
EOF
