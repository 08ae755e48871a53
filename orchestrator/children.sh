# shellcheck shell=bash
# orchestrator/children.sh: every long command (gcloud, curl, sleep) runs as a child the shell
# waits for, so that SIGTERM or SIGINT runs the trap at once (bash runs a trap only when its
# foreground command ends, and Cloud Run's SIGKILL comes 10 s after its SIGTERM).
#
# Private: CHILD_PID (the child being waited for; kill_child ends it).

CHILD_PID=""

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
  sleep "$1" &
  CHILD_PID=$!
  wait "$CHILD_PID" || true
  CHILD_PID=""
}

# kill_child: end the child being waited for, if any (cleanup, the watcher's TERM trap).
kill_child() {
  [[ -z $CHILD_PID ]] || kill "$CHILD_PID" 2>/dev/null || true
}
