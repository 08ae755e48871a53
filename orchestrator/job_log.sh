# shellcheck shell=bash
# orchestrator/job_log.sh: the job's log, followed from the agent
# (`GET /runs/ID/log?offset=N&wait=S`) onto stdout: each complete line as it arrives, a last
# partial line at the end. A retry or a reconnect goes on from the same offset, so no line is
# lost or printed twice; a signal that lands while lines are printed waits for them (cleanup.sh's
# critical section).
#
# Sets (results of fetch_log): LOG_STATUS (the run's status, X-Run-Status), LOG_GOT (1 when the
#   answer had bytes).
# Private: LOG_RUN (the run followed), LOG_OFFSET (how much of its log is on stdout; a partial
#   last line waits in $WORK_DIR/pending), LOG_DONE (1 once the whole log is on stdout).
# Reads: the settings. Needs: logging.sh, agent.sh, cleanup.sh (critical_begin, critical_end,
#   in_cleanup).

LOG_RUN=""
LOG_OFFSET=0
LOG_DONE=0
LOG_STATUS=""
LOG_GOT=0

# log_follow RUN_ID: follow that run's log from its first byte.
log_follow() {
  LOG_RUN=$1 LOG_OFFSET=0 LOG_DONE=0
  : >"$WORK_DIR/pending"
}

# fetch_log WAIT [MAX_TIME]: the log's bytes from LOG_OFFSET (held up to WAIT s for new ones);
# complete lines go to stdout, a last partial one waits in $WORK_DIR/pending. Sets LOG_STATUS, and
# LOG_GOT=1 when the log moved on.
fetch_log() {
  local wait=$1 max_time=${2:-$(($1 + 15))} next skipped
  LOG_GOT=0
  agent --raw GET "/runs/$LOG_RUN/log?offset=$LOG_OFFSET&wait=$wait" "$max_time" \
    -D "$WORK_DIR/headers"
  [[ $HTTP_CODE == 200 ]] || return 0
  next=$(header x-next-offset)
  skipped=$(header x-log-skipped)
  LOG_STATUS=$(header x-run-status)
  if [[ ! $next =~ ^[0-9]+$ ]]; then
    in_cleanup && return 0
    die "$EX_AGENT" "step 6/6: the agent's log answer has no X-Next-Offset"
  fi
  if [[ ${skipped:-0} != 0 ]]; then
    log WARNING "step 6/6: $skipped bytes of the job's output were no longer kept on the VM (LOG_MAX_BYTES)"
  fi
  critical_begin # the offset, the pending bytes and stdout move together
  ((next == LOG_OFFSET)) || LOG_GOT=1
  LOG_OFFSET=$next
  answer_bytes >>"$WORK_DIR/pending"
  emit_lines
  critical_end
}

# Every complete line of $WORK_DIR/pending to stdout; the rest stays for the next chunk.
emit_lines() {
  local n
  n=$(tr -dc '\n' <"$WORK_DIR/pending" | wc -c)
  ((n > 0)) || return 0
  head -n "$n" "$WORK_DIR/pending"
  tail -n +"$((n + 1))" "$WORK_DIR/pending" >"$WORK_DIR/pending.rest"
  mv -f "$WORK_DIR/pending.rest" "$WORK_DIR/pending"
}

# The job's last line, when it did not end with a newline.
flush_log() {
  [[ -s $WORK_DIR/pending ]] || return 0
  cat "$WORK_DIR/pending"
  printf '\n'
  : >"$WORK_DIR/pending"
}

# log_end: the whole log is on stdout, its last partial line too.
log_end() {
  flush_log
  LOG_DONE=1
}

# log_to_end: the cleanup's step: what the job printed since the last fetch (a run cut off by a
# signal, RUN_TIMEOUT or an error), followed until the run has ended and its log is all here, or
# the time is spent (a signal's budget; else 15 s), once.
log_to_end() {
  local deadline=$((SECONDS + 15))
  [[ -n $LOG_RUN ]] && ((LOG_DONE == 0)) || return 0
  while ((SECONDS < deadline)); do
    fetch_log 2 5
    [[ $HTTP_CODE == 200 ]] || break
    ((LOG_GOT)) || [[ $LOG_STATUS == running ]] || break
  done
  log_end
}

header() { tr -d '\r' <"$WORK_DIR/headers" | sed -n "s/^$1: *//Ip" | tail -n 1; }
