# shellcheck shell=bash
# Shell functions (sourced, not run) that let a benchmark drive both forms of boxsync's
# command line, so that one run can alternate a build from before box identities (issue 18)
# with one after:
#
#   old form (6e35d9f, main before issue 18):   -p HOST:PORT; no `id` subcommand
#   ID form (issue 18):                          `boxsync id -d DIR` prints the box's ID;
#                                                -p ID@HOST:PORT trusts ID and dials it;
#                                                --trust ID trusts a box without dialing it
#
# A binary speaks the ID form when `BIN id -d DIR` succeeds and prints one line: that is
# the test, per binary, nothing else (no version numbers).
#
#   bx_probe BIN                  probes BIN (in a scratch dir) and remembers its form; call
#                                 it in the script's own shell, not in $(...), so it sticks
#   bx_form BIN                   "id" or "old" (probes again if bx_probe did not run)
#   bx_init_box BIN DIR SNAP      makes DIR; for the ID form, creates DIR's identity, prints
#                                 its ID and keeps a copy of DIR/.boxsync in SNAP (what a
#                                 fresh box has after `id`), so that bx_reset_box can empty
#                                 DIR without changing its ID; prints nothing for the old form
#   bx_reset_box DIR SNAP         empties DIR (state included) and puts the identity back
#   bx_reset_state DIR SNAP       the same for DIR/.boxsync only (the shared files stay):
#                                 no hash cache, no record, the same ID
#   bx_peer FORM ID HOST:PORT     the --peer value: ID@HOST:PORT, or HOST:PORT (old form)
#   bx_trust FORM ID...           the --trust options for these IDs (none for the old form),
#                                 one word a line: read them with mapfile
#
# Needs BX_SCRATCH, a folder for the probes (the caller's temporary folder).

declare -A BX_FORMS=()

bx_probe() {
  local bin=$1 probe out
  if [[ -z ${BX_FORMS[$bin]:-} ]]; then
    [[ -x $bin ]] || { echo "bench: $bin is not an executable boxsync binary" >&2; return 1; }
    probe=$(mktemp -d "${BX_SCRATCH:?BX_SCRATCH is not set}/probe-XXXXXX")
    if out=$("$bin" id -d "$probe/box" 2>/dev/null) && [[ $(printf '%s\n' "$out" | wc -l) -eq 1 && -n $out ]]; then
      BX_FORMS[$bin]=id
    else
      BX_FORMS[$bin]=old
    fi
    rm -rf "$probe"
  fi
}

bx_form() {
  bx_probe "$1" || return 1
  echo "${BX_FORMS[$1]}"
}

# A human-readable line saying which form a binary was found to speak.
bx_describe() {
  local bin=$1 form
  form=$(bx_form "$bin")
  if [[ $form == id ]]; then
    echo "$bin: has 'id': ID form (--peer ID@HOST:PORT, --trust ID)"
  else
    echo "$bin: no 'id' subcommand: old form (--peer HOST:PORT)"
  fi
}

bx_init_box() {
  local bin=$1 dir=$2 snap=$3 id
  mkdir -p "$dir"
  [[ $(bx_form "$bin") == id ]] || return 0
  id=$("$bin" id -d "$dir") || { echo "bench: '$bin id -d $dir' failed" >&2; return 1; }
  if [[ -z $id || $id == *[[:space:]]* ]]; then
    echo "bench: '$bin id -d $dir' printed '$id', not one ID" >&2
    return 1
  fi
  rm -rf "$snap"
  cp -a "$dir/.boxsync" "$snap"
  echo "$id"
}

bx_reset_box() {
  rm -rf "$1"
  mkdir -p "$1"
  bx_reset_state "$1" "$2"
}

bx_reset_state() {
  local dir=$1 snap=$2
  rm -rf "$dir/.boxsync"
  if [[ -d $snap ]]; then cp -a "$snap" "$dir/.boxsync"; fi
}

bx_peer() {
  local form=$1 id=$2 addr=$3
  if [[ $form == id ]]; then echo "$id@$addr"; else echo "$addr"; fi
}

bx_trust() {
  local form=$1 id
  shift
  [[ $form == id ]] || return 0
  for id in "$@"; do printf -- '--trust\n%s\n' "$id"; done
}
