# shellcheck shell=bash
# orchestrator/vm.sh: the VM itself: start it (gcloud returns once it is RUNNING), read its
# status, and stop it in the cleanup (the Compute API with curl, bounded by STOP_TIMEOUT, or only
# asked after a signal).
#
# Sets (results): BOOT_DEADLINE (start_vm: when the boot must be done, BOOT_TIMEOUT from the
#   start), AGENT_IP (vm_agent_address), VM_STATUS (read_vm_status, describe_vm), VM_INTERNAL
#   and VM_NAT (describe_vm; VM_INTERNAL also from the start, for nic0), RUN_LIMIT and
#   RUN_LIMIT_ACTION (note_run_limit: the VM's scheduling.maxRunDuration in seconds, "" when
#   unset, and its instanceTerminationAction), LAST_START_ID (note_last_start), VM_UP_AT and
#   VM_DOWN_AT (when this execution saw the VM RUNNING, or took it over, and when its stop ended,
#   in microseconds; 0: not yet; the summary's billed seconds).
# Private: OWN_VM (1 once this execution asked the VM to start, or took it over from the claim's
#   earlier holder).
# Reads: the settings, STATIC_IP (address.sh). Needs: logging.sh, compute.sh, capacity.sh
#   (start_refused_for_capacity, wait_for_capacity, no_capacity_if_refused_before, started_as,
#   start_on_home_type), watcher.sh
#   (console_from_start before the start, start_watcher once it is RUNNING), agent.sh
#   (agent_url_of).

OWN_VM=0 VM_UP_AT=0 VM_DOWN_AT=0
RUN_LIMIT="" RUN_LIMIT_ACTION="" LAST_START_ID=""
VM_INTERNAL=""

# 3. Start the VM (a running one is fine); gcloud returns once it is RUNNING. The watcher of its
# boot starts then; the console is relayed from this boot's first line of startup.sh on. A zone
# without capacity is waited for, or another machine type tried (capacity.sh).
start_vm() {
  local t0
  t0=$(now)
  BOOT_DEADLINE=$(($(epoch) + BOOT_TIMEOUT))
  check_run_limit
  start_on_home_type # moved to a fallback type by an earlier run: back to its own first
  log INFO "step 3/6: starting $INSTANCE (its boot follows as [vm] lines)"
  console_from_start
  OWN_VM=1
  until gcloud_call "$BOOT_DEADLINE" compute instances start "$INSTANCE" --zone="$ZONE"; do
    start_refused_for_capacity || {
      if gcloud_said "$TRANSIENT_RE"; then # cut off at BOOT_TIMEOUT (after stockouts: exit 9)
        no_capacity_if_refused_before
        die "$EX_TIMEOUT" "starting $INSTANCE: not started within BOOT_TIMEOUT=${BOOT_TIMEOUT}s: $(last_error)"
      fi
      die "$EX_CLOUD" "starting $INSTANCE: $(last_error)"
    }
    wait_for_capacity # a stockout: another machine type, or a wait (capacity.sh)
  done
  VM_UP_AT=$(now)
  VM_INTERNAL=$(gcloud_stderr | sed -n 's/^Instance internal IP is \([0-9.]*\)$/\1/p')
  log INFO "step 3/6: $INSTANCE is RUNNING ($(since "$t0")s)"
  note_last_start
  started_as
  start_watcher "$BOOT_DEADLINE" # from here: nothing of the boot to read before RUNNING
  vm_agent_address
  agent_url_of "$AGENT_IP"
}

# note_last_start: LAST_START_ID, when the VM's current boot was started (its lastStartTimestamp,
# as UTC to the millisecond, the form of startup.sh's boot ids): the watcher takes no earlier
# boot's state for this one's. "" when it cannot be read (the watcher then goes by progress).
note_last_start() {
  local re='"lastStartTimestamp":[[:space:]]*"([^"]+)"'
  LAST_START_ID=""
  compute_api GET "zones/$ZONE/instances/$INSTANCE?fields=lastStartTimestamp"
  [[ $API_CODE == 200 && $API_BODY =~ $re ]] || return 0
  LAST_START_ID=$(date -u -d "${BASH_REMATCH[1]}" +%Y-%m-%dT%H:%M:%S.%3NZ 2>/dev/null) || LAST_START_ID=""
}

# note_run_limit: from the instance in API_BODY (read_labels' answer), its guard that does not
# depend on the guest: scheduling.maxRunDuration (seconds) and instanceTerminationAction.
# Compute Engine stops (or deletes) a VM that has been RUNNING that long, whatever runs on it.
note_run_limit() {
  local limit_re='"maxRunDuration":[[:space:]]*\{[^}]*"seconds":[[:space:]]*"?([0-9]+)'
  local action_re='"instanceTerminationAction":[[:space:]]*"([A-Z_]+)"'
  RUN_LIMIT="" RUN_LIMIT_ACTION=""
  [[ $API_BODY =~ $limit_re ]] && RUN_LIMIT=${BASH_REMATCH[1]}
  [[ $API_BODY =~ $action_re ]] && RUN_LIMIT_ACTION=${BASH_REMATCH[1]}
  return 0
}

# run_limit_needed: the seconds a VM of this execution may stay RUNNING: the boot, the run, the
# cancel and the log after it.
run_limit_needed() { printf '%s' $((BOOT_TIMEOUT + RUN_TIMEOUT + 60)); }

# run_limit_words: the guard as `status` and the log name it.
run_limit_words() {
  if [[ -z $RUN_LIMIT ]]; then
    printf 'none: no scheduling.maxRunDuration (if the guest wedges and this execution dies, nothing stops the VM)'
  else
    printf 'scheduling.maxRunDuration=%ss, instanceTerminationAction=%s' "$RUN_LIMIT" "${RUN_LIMIT_ACTION:-none}"
  fi
}

# check_run_limit: once per run, before the start: a VM without the guard, or with one shorter
# than this execution may need, or one that deletes the VM, is a WARNING with the command that
# sets it (docs/deploy.md).
check_run_limit() {
  local needed set_it
  needed=$(run_limit_needed)
  set_it="gcloud compute instances set-scheduling $INSTANCE --zone=$ZONE --max-run-duration=$((needed + STOP_TIMEOUT))s --instance-termination-action=STOP (while it is stopped; docs/deploy.md)"
  if [[ -z $RUN_LIMIT ]]; then
    log WARNING "step 3/6: $INSTANCE has no guard of its own ($(run_limit_words)): $set_it"
  elif [[ $RUN_LIMIT_ACTION != STOP ]]; then
    log WARNING "step 3/6: $INSTANCE's $(run_limit_words): at the limit Compute Engine does not stop it but ${RUN_LIMIT_ACTION:-does nothing}; $set_it"
  elif ((RUN_LIMIT < needed)); then
    log WARNING "step 3/6: $INSTANCE's scheduling.maxRunDuration=${RUN_LIMIT}s is shorter than this run may take (BOOT_TIMEOUT + RUN_TIMEOUT + 60 s = ${needed}s): Compute Engine may stop it under the job; $set_it"
  fi
}

# vm_agent_address: AGENT_IP, where the agent is reached: the static IP, or the VM's internal
# address (AGENT_ADDRESS=internal, for a job with Direct VPC egress). gcloud's start names nic0's
# internal IP; another NIC is asked.
vm_agent_address() {
  if [[ $AGENT_ADDRESS == static ]]; then
    AGENT_IP=$STATIC_IP
    return
  fi
  AGENT_IP=$VM_INTERNAL
  if [[ $NETWORK_INTERFACE != nic0 || -z $AGENT_IP ]]; then
    gcloud_call $(($(epoch) + API_TIMEOUT)) compute instances describe "$INSTANCE" \
      --zone="$ZONE" --format="value(networkInterfaces[${NETWORK_INTERFACE#nic}].networkIP)" ||
      die "$EX_CLOUD" "reading $INSTANCE's internal address: $(last_error)"
    AGENT_IP=$GCLOUD_OUT
  fi
  [[ -n $AGENT_IP ]] || die "$EX_CLOUD" "$INSTANCE has no internal address on $NETWORK_INTERFACE"
}

# read_vm_status: VM_STATUS now, or "gone (deleted)" when the instance is not found; false when
# it cannot be told (the error: last_error).
read_vm_status() {
  if gcloud_call $(($(epoch) + API_TIMEOUT)) compute instances describe "$INSTANCE" \
    --zone="$ZONE" --format='value(status)'; then
    VM_STATUS=$GCLOUD_OUT
    return 0
  fi
  [[ $(last_error) == *"was not found"* ]] || return 1
  VM_STATUS="gone (deleted)"
}

# describe_vm: VM_STATUS, VM_INTERNAL and VM_NAT of the instance's interface.
describe_vm() {
  local n=${NETWORK_INTERFACE#nic}
  gcloud_call $(($(epoch) + API_TIMEOUT)) compute instances describe "$INSTANCE" \
    --zone="$ZONE" --format="value[separator=' '](status,networkInterfaces[$n].networkIP,networkInterfaces[$n].accessConfigs[0].natIP)" ||
    die "$EX_CLOUD" "describing $INSTANCE: $(last_error)"
  read -r VM_STATUS VM_INTERNAL VM_NAT <<<"$GCLOUD_OUT"
}

# vm_went_away: true when VM_STATUS says the VM and its processes are gone or going (a stop, a
# preemption, a suspension, a deletion); false while it runs or may run again: RUNNING, and
# REPAIRING (Compute Engine repairing its host: it can come back to RUNNING), PROVISIONING and
# STAGING. A status this script does not know is logged and waited on, not taken for gone.
vm_went_away() {
  case $VM_STATUS in
    RUNNING) return 1 ;;
    REPAIRING | PROVISIONING | STAGING)
      log WARNING "$INSTANCE is $VM_STATUS (Compute Engine can bring it back to RUNNING): waiting for its agent"
      return 1
      ;;
    STOPPING | TERMINATED | STOPPED | SUSPENDING | SUSPENDED | DEPROVISIONING | "gone (deleted)")
      return 0
      ;;
    *)
      log WARNING "$INSTANCE is $VM_STATUS, a status this script does not know: waiting for its agent"
      return 1
      ;;
  esac
}

# vm_owned: true while the cleanup has the VM to stop.
vm_owned() { ((OWN_VM)); }

# vm_adopt: the claim's earlier holder left the VM up: this execution's cleanup stops it
# (claim.sh's takeover).
vm_adopt() {
  OWN_VM=1
  ((VM_UP_AT)) || VM_UP_AT=$(now)
}

# vm_disown: leave the VM as it is (KEEP_VM=1, or the VM is another run's).
vm_disown() { OWN_VM=0; }

# stop_vm DEADLINE [--async]: the cleanup's stop, with the Compute API (curl: a gcloud start-up
# would cost a second of the 10 s a signal leaves): followed until TERMINATED by DEADLINE, or,
# with --async (a signal's cleanup: Cloud Run's SIGKILL comes 10 s after its SIGTERM, and a stop
# takes tens of seconds), only until Compute has it: the VM stops by itself, and the next
# execution's start waits for it. False when it was not accepted, or not TERMINATED in time.
stop_vm() {
  local deadline=$1 async=${2:-} t0 rc delay=1 error=""
  ((OWN_VM)) || return 0
  t0=$(now)
  log INFO "cleanup: stopping $INSTANCE"
  while :; do # the stop asked; transient errors tried again
    rc=0
    compute_api POST "zones/$ZONE/instances/$INSTANCE/stop"
    api_outcome || rc=$?
    ((rc == 3 && $(epoch) + delay <= deadline)) || break
    nap "$delay"
    delay=$((delay * 2 > 4 ? 4 : delay * 2))
  done
  if ((rc == 0)) && [[ -z $async ]]; then
    follow_operation "$deadline" || rc=$?
    [[ $API_CODE != 200 ]] || ! error=$(operation_error) || rc=1
  fi
  ((rc != 0)) || VM_DOWN_AT=$(now)
  if ((rc == 0)) && [[ -n $async ]]; then
    log INFO "cleanup: $INSTANCE is stopping; not waiting for TERMINATED (SIGKILL comes 10 s after SIGTERM): the next execution's start waits for it ($(since "$t0")s)"
  elif ((rc == 0)); then
    log INFO "cleanup: $INSTANCE is TERMINATED ($(since "$t0")s)"
  elif [[ -n $async ]]; then
    log ERROR "cleanup: the stop of $INSTANCE was not accepted: ${error:-$API_ERROR}. Stop it: gcloud compute instances stop $INSTANCE --zone=$ZONE"
  else
    log ERROR "cleanup: $INSTANCE may still be running (not TERMINATED within STOP_TIMEOUT=${STOP_TIMEOUT}s: ${error:-$API_ERROR}): check it with gcloud compute instances describe $INSTANCE --zone=$ZONE"
  fi
  return "$((rc == 0 ? 0 : 1))"
}
