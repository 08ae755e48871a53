# shellcheck shell=bash
# orchestrator/cleanup.sh: the end of every execution: the cleanup (trap on EXIT) that undoes
# what this execution took on, once, and the signals (TERM, INT) that lead to it.
#
# Private: IN_CLEANUP (1 once the cleanup has begun), SIGNALLED (1 when a signal started it),
#   CRITICAL and DEFERRED (a signal that came while the log's lines were printed, taken when
#   they are).
# Reads: the settings, START (logging.sh), STATIC_IP (address.sh). Needs: every module whose
#   steps it runs: children.sh, watcher.sh, vm.sh, run.sh, job_log.sh, address.sh, claim.sh.

IN_CLEANUP=0
SIGNALLED=0
CRITICAL=0
DEFERRED=""

# Runs once, on any exit. Asks the API to stop the VM first (a Cloud Run task has 10 s between
# SIGTERM and SIGKILL), then cancels a run still going, waits for TERMINATED within
# STOP_TIMEOUT, detaches the address, and last gives back the VM's claim. A failing step does not
# stop the next one.
cleanup() {
  local rc=$? t0
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
  if vm_owned || address_owned; then
    local stop_for=$STOP_TIMEOUT async="" cancel_for=8 detach_for=$API_TIMEOUT
    if ((SIGNALLED)); then # 10 s until SIGKILL: the stop asked, not waited for
      stop_for=6 async=--async cancel_for=4 detach_for=2
    fi
    stop_vm_begin $(($(date +%s) + stop_for)) ${async:+"$async"} # asked first, followed in the background
    cancel_run_if_active "$cancel_for"
    log_catch_up # what the job printed since the last fetch
    stop_vm_wait "$t0" || { ((rc == 0)) && rc=$EX_CLEANUP; }
    detach_static_ip $(($(date +%s) + detach_for)) || { ((rc == 0)) && rc=$EX_CLEANUP; }
  fi
  release_claim || { ((rc == 0)) && rc=$EX_CLEANUP; } # last: the VM is free again
  finish "$rc"
}

# in_cleanup: true once the cleanup has begun.
in_cleanup() { ((IN_CLEANUP)); }

# on_signal CODE NAME: SIGTERM or SIGINT: exit through the cleanup, at once, unless the log's
# lines are being printed (then at the end of that, so no line is printed twice or lost).
on_signal() {
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

finish() {
  [[ -n $WORK_DIR ]] && rm -rf "$WORK_DIR"
  log INFO "exit $1 after $(since "$START")s"
  exit "$1"
}
