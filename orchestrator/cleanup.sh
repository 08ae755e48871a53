# shellcheck shell=bash
# orchestrator/cleanup.sh: the end of every execution: the cleanup (trap on EXIT) that undoes
# what this execution took on, once, and the signals (TERM, INT) that lead to it.
#
# Private: IN_CLEANUP (1 once the cleanup has begun), SIGNALLED (1 when a signal started it),
#   SIGNAL_AT (when it arrived, in microseconds), CRITICAL and DEFERRED (a signal that came while
#   the log's lines were printed, taken when they are).
# Reads: the settings, START (logging.sh), STATIC_IP (address.sh), COMMAND and SUMMARY
#   (entrypoint.sh: the command, and 1 when it ends with a summary line), CHECK_CODE (check.sh).
# Needs: every module whose steps it runs: children.sh, watcher.sh, vm.sh, capacity.sh, run.sh,
#   job_log.sh, address.sh, slot.sh, claim.sh, and logging.sh's summary.

IN_CLEANUP=0
SIGNALLED=0 SIGNAL_AT=0
CRITICAL=0
DEFERRED=""
# Cloud Run sends SIGKILL 10 s after its SIGTERM: the whole cleanup after a signal ends within
# this many seconds of the signal's arrival, each call bounded by what is left of them.
readonly SIGNAL_BUDGET=9

# Runs once, on any exit, and undoes what this execution took on, in this order: cancel a run
# still going (the agent answers once the job has ended: its SIGTERM, then SIGKILL after
# KILL_GRACE), print what the job wrote until then, stop the VM (waited for until TERMINATED
# within STOP_TIMEOUT, or, after a signal, only asked), move it back to its own machine type,
# detach the address, record how the slot's run ended, and last give the VM's claim back. A
# failing step does not stop the next one. After a signal every step is bounded by what is left
# of SIGNAL_BUDGET, the later steps' time kept back; what could not be finished then leaves the
# claim lapsed, for the next execution to finish.
cleanup() {
  local rc=$? t0 done=1
  trap - EXIT
  trap '' INT TERM
  set +e
  IN_CLEANUP=1
  kill_child
  stop_watcher
  if [[ ${KEEP_VM:-0} == 1 ]] && { vm_owned || address_owned; }; then
    log WARNING "KEEP_VM=1: leaving $INSTANCE running with $STATIC_IP attached, and keeping its claim ($(claim_description)), so no other execution stops it or detaches the address under you. It costs money until you run: gcloud compute instances stop $INSTANCE --zone=$ZONE && gcloud compute instances delete-access-config $INSTANCE --zone=$ZONE --access-config-name='$ACCESS_CONFIG_NAME' && gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=$CLAIM_LABEL"
    vm_disown
    address_disown
    claim_keep
  fi
  t0=$(now)
  [[ $STEP == check ]] || step cleanup
  ((!SIGNALLED)) || budget_start "$SIGNAL_BUDGET" "$SIGNAL_AT"
  if vm_owned || address_owned; then
    budget_keep 3 # the stop, the detach and the claim need about a second each
    cancel_run_if_active 15
    log_to_end # what the job printed until it ended (its closing lines after a cancel)
    budget_keep 2
    if ((SIGNALLED)); then
      stop_vm "$(($(epoch) + STOP_TIMEOUT))" --async || { rc=$(failed "$rc") && done=0; }
    elif stop_vm "$(($(epoch) + STOP_TIMEOUT))"; then
      restore_home_type "$(($(epoch) + API_TIMEOUT))" || rc=$(failed "$rc")
    else
      rc=$(failed "$rc")
    fi
    budget_keep 1
    detach_static_ip "$(($(epoch) + API_TIMEOUT))" || { rc=$(failed "$rc") && done=0; }
  fi
  budget_keep 0
  slot_ended "$(run_end_word "$rc")"
  if ((SIGNALLED && !done)); then
    release_claim --lapse || rc=$(failed "$rc")
  else
    release_claim || rc=$(failed "$rc") # last: the VM is free again
  fi
  log INFO "cleanup: done ($(since "$t0")s)"
  finish "$rc"
}

# failed RC: the exit code once a cleanup step failed: RC, or 7 when RC was 0.
failed() { if (($1 == 0)); then printf '%s' "$EX_CLEANUP"; else printf '%s' "$1"; fi; }

# run_end_word RC: how the run ended, when the cleanup is what ended it (the run's record says so
# when the run ended by itself): the cancel's answer, or this execution's exit code in a word.
run_end_word() {
  local cancelled
  cancelled=$(cancelled_status)
  if [[ -n $cancelled ]]; then
    if (($1 == EX_TIMEOUT)); then printf timed-out; else printf '%s' "$cancelled"; fi
    return
  fi
  case $1 in
    "$EX_VM_GONE") printf vm-gone ;;
    130 | 143) printf interrupted ;;
    *) printf unknown ;;
  esac
}

# in_cleanup: true once the cleanup has begun.
in_cleanup() { ((IN_CLEANUP)); }

# on_signal CODE NAME: SIGTERM or SIGINT: exit through the cleanup, at once, unless the log's
# lines are being printed (then at the end of that, so no line is printed twice or lost).
on_signal() {
  ((SIGNAL_AT)) || SIGNAL_AT=$(now)
  if ((CRITICAL)); then
    DEFERRED="$1 $2"
    return
  fi
  log WARNING "$2 received: cleaning up"
  SIGNALLED=1
  exit "$1"
}

# critical_begin: stdout and the log's offset are being brought in step: a signal waits.
critical_begin() { CRITICAL=1; }

critical_end() {
  local deferred=$DEFERRED
  CRITICAL=0 DEFERRED=""
  if [[ -n $deferred ]] && ((!IN_CLEANUP)); then
    # shellcheck disable=SC2086 # "CODE NAME", split on purpose
    on_signal $deferred
  fi
}

# finish CODE: the work directory removed, the execution's summary line (a run's, a check's),
# and the exit.
finish() {
  local outcome=""
  [[ -n $WORK_DIR ]] && rm -rf "$WORK_DIR"
  log INFO "exit $1 after $(since "$START")s"
  if ((SUMMARY)); then
    if [[ $COMMAND == check ]]; then
      ((CHECK_CODE != 0 || $1 != 0)) || outcome=slot-ok
    elif (($1 == 0)) && [[ -z ${RUN_ID:-} ]]; then
      outcome=skipped # a duplicate, or a slot that already ran: no run started
    elif [[ ${MODE:-run} == test && $1 == 0 ]]; then
      outcome=test-succeeded
    fi
    summary "$1" "$outcome"
  fi
  exit "$1"
}
