# shellcheck shell=bash
# orchestrator/run.sh: the job's run on the agent: start it (or get it back), follow it to its
# end, cancel it, and tell a VM that went away from an agent that does not answer.
#
# Sets (results): RUN_ID (the run this execution started or got back).
# Private: RUN_ACTIVE (1 while that run may still be going), CANCELLED (the run's status as the
#   cancel answered it, "" before a cancel went through).
# Reads: the settings, LOG_STATUS and LOG_GOT (job_log.sh's fetch_log), VM_STATUS (vm.sh),
#   RUN_KEY and RUN_SLOT (slot.sh). Needs: logging.sh, json.sh, children.sh, agent.sh,
#   job_log.sh, vm.sh, address.sh, slot.sh.

RUN_ID=""
RUN_ACTIVE=0
CANCELLED=""

# 5. Start the run. The Idempotency-Key (RUN_KEY: the slot, or the execution) makes a retried
# Cloud Run task, or a duplicate, get its earlier run back, however it ended (RERUN_FAILED=1:
# one that failed runs again).
start_run() {
  local t0 key=$RUN_KEY status body start_by
  t0=$(now)
  slot_window_open 5 # the boot may have taken the job past START_DEADLINE
  body="{\"mode\":\"$MODE\"${RUN_SLOT:+,\"run_slot\":\"$RUN_SLOT\"}"
  ((!RERUN_FAILED)) || body+=',"rerun_failed":true'
  start_by=$(slot_start_by) # the agent starts no new run after it, a retry's neither
  body+="${start_by:+,\"start_by\":\"$start_by\"}}"
  post_run "$key" "$body"
  if [[ $HTTP_CODE == 401 ]] && renew_agent_token; then
    post_run "$key" "$body"
  fi
  case $HTTP_CODE in
    202 | 200)
      RUN_ID=$(json_field id)
      status=$(json_field status)
      [[ $RUN_ID =~ ^[0-9a-f]{32}$ ]] || die "$EX_AGENT" "step 5/6: the agent's answer has no run id: ${BODY:0:200}"
      [[ $status == running ]] && RUN_ACTIVE=1
      log_follow "$RUN_ID"
      if [[ $HTTP_CODE == 202 ]]; then
        log INFO "step 5/6: run $RUN_ID started (mode=$MODE, key=$key) ($(since "$t0")s)"
      elif [[ $status == running || $status == succeeded ]]; then
        log WARNING "step 5/6: key $key already has run $RUN_ID ($status): following it instead of starting the job again"
      else
        log WARNING "step 5/6: key $key already has run $RUN_ID, which $status after the job had started: not starting the job again (RERUN_FAILED=1 says it is safe to)"
      fi
      if [[ $HTTP_CODE == 202 || $status == running ]]; then slot_started "$RUN_ID"; else slot_started "$RUN_ID" "$status"; fi
      ;;
    412)
      die "$EX_TOO_LATE" "step 5/6: too late for slot $RUN_SLOT: the agent starts no new run after $start_by (START_DEADLINE=${START_DEADLINE}s after the slot): $(json_field detail); the job is not started"
      ;;
    409)
      vm_disown
      address_disown
      die "$EX_BUSY" "step 5/6: another run is in progress on $INSTANCE (run $(json_field run_id)); leaving the VM and its address alone"
      ;;
    401) die "$EX_AGENT" "step 5/6: the agent rejected AGENT_TOKEN (401): the token in this job and on the VM differ${AGENT_TOKEN_SECRET:+ (and the latest version of secret $AGENT_TOKEN_SECRET did not help: see above)}" ;;
    *) die "$EX_AGENT" "step 5/6: unexpected answer to POST /runs: $(last_agent_error)" ;;
  esac
}

# post_run KEY BODY: POST /runs, transient failures tried again within API_TIMEOUT; the answer
# in HTTP_CODE and BODY.
post_run() {
  local key=$1 body=$2 deadline delay=1
  deadline=$(($(epoch) + API_TIMEOUT))
  while :; do
    agent POST /runs 30 -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
      --data "$body"
    is_transient_http || return 0
    (($(epoch) + delay <= deadline)) ||
      die "$EX_AGENT" "step 5/6: could not start the run: $(last_agent_error)"
    log WARNING "step 5/6: POST /runs: $(last_agent_error); retrying in ${delay}s"
    nap "$delay"
    delay=$((delay * 2 > 8 ? 8 : delay * 2))
  done
}

# 6. Follow the run: its log onto stdout as it arrives (job_log.sh), until the run ends or
# RUN_TIMEOUT. Its record then decides the exit code.
wait_for_run() {
  local t0 deadline remaining wait status code error delay=1
  t0=$(now)
  deadline=$(($(epoch) + RUN_TIMEOUT))
  log INFO "step 6/6: following run $RUN_ID; the job's output follows on stdout, line by line"
  while :; do
    remaining=$((deadline - $(epoch)))
    if ((remaining <= 0)); then
      log ERROR "step 6/6: run $RUN_ID still running after RUN_TIMEOUT=${RUN_TIMEOUT}s; cancelling it"
      cancel_run
      exit "$EX_TIMEOUT" # the cleanup prints what the job wrote while it stopped
    fi
    wait=$((remaining < 50 ? remaining : 50))
    fetch_log "$wait" $((wait + 15))
    if [[ $HTTP_CODE == 200 ]]; then
      delay=1
      [[ $LOG_STATUS == running ]] || ((LOG_GOT)) || break
    elif is_transient_http; then
      [[ $HTTP_CODE != 000 ]] || check_vm_still_there
      log WARNING "step 6/6: following run $RUN_ID: $(last_agent_error); retrying in ${delay}s"
      nap "$delay"
      delay=$((delay * 2 > 8 ? 8 : delay * 2))
    else
      die "$EX_AGENT" "step 6/6: following run $RUN_ID: $(last_agent_error)"
    fi
  done
  log_end
  RUN_ACTIVE=0
  final_record
  status=$(json_field status)
  slot_ended "$status"
  if [[ $status == succeeded ]]; then
    log INFO "step 6/6: run $RUN_ID succeeded ($(since "$t0")s)"
    return
  fi
  # A run that ended badly as its VM went down (a stop, a preemption) is the VM's story: exit 8.
  check_vm_still_there "run $RUN_ID ended $status (exit code $(json_field exit_code))"
  code=$(json_field exit_code) error=$(json_field error)
  # the agent's error names the exit code already ("job failed (exit code 3): <last line>")
  die "$EX_FAILED" "step 6/6: run $RUN_ID $status: ${error:-exit code ${code:-none}}"
}

# The agent does not answer during the run: is the VM still RUNNING? If not (a Spot VM
# preempted, a stop by hand, a deletion), waiting is pointless: say so, keep the log we have,
# let the cleanup finish what is left, exit 8. A RUNNING VM keeps being retried.
check_vm_still_there() {
  local what=${1:-}
  read_vm_status || return 0 # cannot tell: keep retrying
  vm_went_away || return 0
  RUN_ACTIVE=0 # nothing left to cancel: the VM's processes are gone with it
  log_end      # nor a log to fetch
  die "$EX_VM_GONE" "step 6/6: the VM went away during run $RUN_ID${what:+ ($what)}: $INSTANCE is $VM_STATUS (a Spot VM is preempted this way, ${RUN_LIMIT:+a VM whose maxRunDuration of ${RUN_LIMIT}s has passed too, }a stop by hand or a deletion looks the same). The job's output up to then is above; what the job did after it is unknown: check before running it again."
}

# The run's record once it has ended (transient errors retried within API_TIMEOUT).
final_record() {
  local deadline delay=1
  deadline=$(($(epoch) + API_TIMEOUT))
  while :; do
    agent GET "/runs/$RUN_ID" 30
    [[ $HTTP_CODE == 200 ]] && return
    [[ $HTTP_CODE != 000 ]] || check_vm_still_there # an interrupted run: the VM stopping?
    if ! is_transient_http || (($(epoch) + delay > deadline)); then
      die "$EX_AGENT" "step 6/6: reading run $RUN_ID: $(last_agent_error)"
    fi
    nap "$delay"
    delay=$((delay * 2 > 8 ? 8 : delay * 2))
  done
}

# cancel_run [MAX_TIME]: the run cancelled (the agent answers once the job has ended: SIGTERM,
# then SIGKILL after its KILL_GRACE).
cancel_run() {
  agent POST "/runs/$RUN_ID/cancel" "${1:-15}"
  if [[ $HTTP_CODE == 200 ]]; then
    RUN_ACTIVE=0
    CANCELLED=$(json_field status)
    log WARNING "run $RUN_ID cancelled (its record says $CANCELLED)"
  else
    log ERROR "could not cancel run $RUN_ID: $(last_agent_error)"
  fi
}

# cancel_run_if_active [MAX_TIME]: the cleanup's step: a run still going is cancelled.
cancel_run_if_active() {
  ((RUN_ACTIVE == 0)) || cancel_run "$@"
}

# cancelled_status: the run's status as the cancel answered it ("" when there was none).
cancelled_status() { printf '%s' "$CANCELLED"; }
