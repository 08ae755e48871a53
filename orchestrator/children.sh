# shellcheck shell=bash
# orchestrator/children.sh: every long command (gcloud, curl, sleep) runs as a child the shell
# waits for, so that SIGTERM or SIGINT runs the trap at once (bash runs a trap only when its
# foreground command ends, and Cloud Run's SIGKILL comes 10 s after its SIGTERM); and the time
# budget that bounds each of them in the cleanup after a signal.
#
# Private: CHILD_PID (the child being waited for; kill_child ends it), BUDGET_END (when the
#   budget is spent, in microseconds since the epoch; 0: no budget), BUDGET_KEEP (microseconds
#   of it kept for the steps after the current one).

CHILD_PID=""
BUDGET_END=0 BUDGET_KEEP=0

# budget_start SECONDS FROM_US: from now on, every call ends by SECONDS after FROM_US (the
# signal's arrival).
budget_start() { BUDGET_END=$(($2 + $1 * 1000000)); }

# budget_keep SECONDS: what the next steps need is kept: the current one ends that much earlier.
budget_keep() { BUDGET_KEEP=$(($1 * 1000000)); }

# max_time SECONDS: how long a call may take (seconds, one decimal): SECONDS, or what is left of
# the budget if less; 0 when nothing is left (the caller does not make the call).
max_time() {
  local left
  if ((BUDGET_END == 0)); then
    printf '%s' "$1"
    return
  fi
  left=$(((BUDGET_END - BUDGET_KEEP - $(now)) / 100000)) # tenths of a second
  ((left < ${1%.*} * 10)) || left=$((${1%.*} * 10))
  if ((left < 2)); then printf 0; else printf '%d.%d' $((left / 10)) $((left % 10)); fi
}

# in_background OUT ERR CMD...: run CMD as a child we wait for, so a TERM reaches the trap at
# once, with its stdout and stderr in the files OUT and ERR. (The redirections are on the child
# only: on this call they would also hold the shell's own stderr while a trap runs.)
in_background() {
  local rc=0 out=$1 err=$2
  shift 2
  "$@" >"$out" 2>"$err" &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# nap SECONDS: a sleep we wait for as a child, so that SIGTERM or SIGINT runs the trap at once
# (bash runs a trap only when its foreground command ends: a plain `sleep 16` would hold back
# the cleanup, and Cloud Run's SIGKILL comes 10 s after its SIGTERM).
nap() {
  local seconds=$1
  ((BUDGET_END == 0)) || seconds=$(max_time "${1%.*}")
  [[ $seconds != 0 ]] || return 0
  sleep "$seconds" &
  CHILD_PID=$!
  wait "$CHILD_PID" || true
  CHILD_PID=""
}

# kill_child: end the child being waited for, if any (cleanup, the watcher's TERM trap).
kill_child() {
  [[ -z $CHILD_PID ]] || kill "$CHILD_PID" 2>/dev/null || true
}
