# shellcheck shell=bash
# orchestrator/slot.sh: once per scheduled slot. With SCHEDULE (unix-cron) and TIME_ZONE, set to
# the Cloud Scheduler job's, an execution's slot is the latest instant at or before its start
# that the schedule fires (slot.py, with cronsim and zoneinfo; on daylight-saving days the rule of
# docs/orchestrator.md, "Daylight saving"), and the run's Idempotency-Key is the slot and the
# task index. Cloud Scheduler delivers at least once and Cloud Run's :run has no request ID, so a
# duplicate is a new execution: the VM's labels say which slot last ran on it, with which
# execution and run and how it ended, and are read with the claim, before the VM or the address
# is touched:
#   vm-job-slot (the slot, UTC: 20261202t0000z), vm-job-slot-run, vm-job-slot-execution (the
#   execution's name, or its first 50 characters and a digest of it when longer than a label
#   value may be), vm-job-slot-state (started, then how the run ended: succeeded, failed,
#   cancelled, interrupted, timed-out, vm-gone, unknown),
# written when the agent accepts the run and again when the claim is given back; and the claim's
# value carries the slot of the execution that holds the VM (<until>-<owner>-<slot>).
# A slot that ran (or is being run by another execution) is exit 0; a retried task (attempt > 0
# of the same execution) whose run started gets that run back (the agent returns it for the
# key); a new run is never started past START_DEADLINE: exit 10 (checked before the VM starts,
# just before the run is posted, and by the agent itself with the run's start_by). A test run
# (MODE=test) takes no slot: its key is its own and it writes no slot record. Without SCHEDULE:
# the key is the execution's, and one INFO line says duplicates are not detected.
#
# Sets (results): RUN_KEY (the Idempotency-Key, also the job's RUN_KEY), RUN_SLOT (the slot, ISO
#   8601 in TIME_ZONE, "" without a slot), SLOT_LABEL (the slot as a label value, "" without a
#   slot), SLOT_RETRY (1: this execution's run of the slot has started: a retry), SLOT_STATE
#   (how this execution's run of the slot ended, as recorded: started, succeeded, ...),
#   SLOTTED (1 when this execution runs a slot: SCHEDULE set and MODE=run).
# Private: SLOT_EPOCH, NEXT_SLOT, SLOT_DST (slot.py's word on daylight saving), SLOT_RUN (the
#   run this execution recorded), RAN_* (the record read from the labels).
# Reads: the settings, HOLDER and OTHER_LABELS (claim.sh's read_labels). Needs: logging.sh,
#   claim.sh (claim_slot, claim_owner, CLAIM_OWNER, claim_lapsed, claim_relabel).

readonly SLOT_LABELS_RE='"vm-job-slot(-run|-execution|-state)?":"[^"]*",?'
RUN_KEY="" RUN_SLOT="" SLOT_LABEL="" SLOT_RETRY=0 SLOTTED=0
SLOT_EPOCH="" NEXT_SLOT="" SLOT_DST="" SLOT_RUN="" SLOT_STATE=""
RAN_SLOT="" RAN_RUN="" RAN_EXECUTION="" RAN_STATE=""

# slot_of [EPOCH]: SLOT_EPOCH, RUN_SLOT, SLOT_LABEL, NEXT_SLOT and SLOT_DST for now (or EPOCH);
# exit 2 on a bad SCHEDULE or TIME_ZONE, or a python3 without cronsim (check_config calls it
# first).
slot_of() {
  local out py_path next_epoch
  py_path="$(dirname "$ORCHESTRATOR")/python"
  [[ -d $py_path ]] || py_path=""
  out=$(PYTHONPATH="$py_path${PYTHONPATH:+:$PYTHONPATH}" python3 "$ORCHESTRATOR/slot.py" "$SCHEDULE" "$TIME_ZONE" "${1:-$(epoch)}" 2>&1) ||
    die "$EX_CONFIG" "configuration: ${out:-slot.py failed}"
  read -r SLOT_EPOCH RUN_SLOT next_epoch NEXT_SLOT <<<"${out%%$'\n'*}"
  SLOT_DST=""
  [[ $out != *$'\n'dst:\ * ]] || SLOT_DST=${out#*$'\n'dst: }
  SLOT_LABEL=$(stamp_in UTC0 '%Y%m%dt%H%Mz' "$SLOT_EPOCH")
  RUN_KEY="$(stamp_in UTC0 '%Y-%m-%dT%H:%MZ' "$SLOT_EPOCH")/${CLOUD_RUN_TASK_INDEX:-0}"
}

# slot_setup: step 1: this execution's slot and key (or, without SCHEDULE or in test mode, the
# execution's key); the daylight-saving warning, once.
slot_setup() {
  local task=${CLOUD_RUN_TASK_INDEX:-0} execution=${CLOUD_RUN_EXECUTION:-manual-$(epoch)-$$-$RANDOM}
  if [[ -z $SCHEDULE ]]; then
    RUN_KEY="$execution/$task"
    log INFO "step 1/6: SCHEDULE is not set: a duplicate execution of one scheduled time (Cloud Scheduler delivers at least once) is not detected"
    return 0
  fi
  slot_of
  if [[ -n $SLOT_DST ]]; then
    log WARNING "step 1/6: TIME_ZONE $TIME_ZONE changes its clock for daylight saving at a time SCHEDULE '$SCHEDULE' fires: $SLOT_DST (docs/orchestrator.md, \"Daylight saving\"; Cloud Scheduler says only that such changes can make a job run or not run unexpectedly, and recommends UTC)"
  fi
  if [[ $MODE == test ]]; then
    RUN_KEY="test/$execution/$task" RUN_SLOT="" SLOT_LABEL=""
    log INFO "step 1/6: MODE=test: a dry run takes no slot (key $RUN_KEY): it is not taken for the slot's run, and the slot's real run still runs the job"
    return 0
  fi
  SLOTTED=1
  log INFO "step 1/6: slot $RUN_SLOT (SCHEDULE '$SCHEDULE' in $TIME_ZONE; the next is $NEXT_SLOT)${START_DEADLINE:+; it starts by $(slot_deadline_words)}"
}

# slot_of_claim VALUE: this execution's own claim from an earlier attempt (VALUE) carries the slot
# that attempt ran for: it is this execution's slot too, whatever the time is now.
slot_of_claim() {
  local slot
  ((SLOTTED)) || return 0
  slot=$(claim_slot "$1")
  [[ -n $slot && $slot != "$SLOT_LABEL" ]] || return 0
  slot_of "$(slot_label_epoch "$slot")"
  log INFO "step 2/6: this execution's earlier attempt claimed $INSTANCE for slot $RUN_SLOT: that is this execution's slot"
}

# slot_deadline_words: when the job must start at the latest (START_DEADLINE after the slot).
slot_deadline_words() { stamp_in "$TIME_ZONE" '%Y-%m-%dT%H:%M:%S%z' "$((SLOT_EPOCH + START_DEADLINE))"; }

# slot_check: step 2, with the labels just read: a slot that ran on this VM, or that another
# execution holds the VM for, is exit 0; a retry of this execution's started run goes on (the
# agent gives the run back); past START_DEADLINE, exit 10. Nothing is touched before.
slot_check() {
  read_slot_record
  ((SLOTTED)) || return 0
  if [[ -n $RAN_SLOT && ${CLOUD_RUN_TASK_ATTEMPT:-0} != 0 && -n ${CLOUD_RUN_EXECUTION:-} &&
    $RAN_EXECUTION == "$(slot_execution)" ]]; then
    SLOT_RETRY=1
    [[ $RAN_SLOT == "$SLOT_LABEL" ]] || slot_of "$(slot_label_epoch "$RAN_SLOT")"
    local again="not starting the job again"
    if ((RERUN_FAILED)); then
      again+=" unless it failed (RERUN_FAILED=1), and not past START_DEADLINE"
      # a run that ended badly starts anew: the window holds for it as for any new run
      [[ $RAN_STATE == succeeded || $RAN_STATE == started ]] || SLOT_RETRY=0
    fi
    log WARNING "step 2/6: a retry: this execution's run $RAN_RUN of slot $RUN_SLOT started ($RAN_STATE); getting it back, $again"
    slot_window_open 2
    return 0
  fi
  if [[ $RAN_SLOT == "$SLOT_LABEL" ]]; then
    log INFO "step 2/6: slot $RUN_SLOT already ran on $INSTANCE (execution $RAN_EXECUTION, run $RAN_RUN, $RAN_STATE): not running it again; the VM and its address are left alone"
    exit 0
  fi
  if [[ -n $HOLDER && $(claim_slot "$HOLDER") == "$SLOT_LABEL" && $(claim_owner "$HOLDER") != "$CLAIM_OWNER" ]] && ! claim_lapsed "$HOLDER"; then
    log INFO "step 2/6: slot $RUN_SLOT is being run by another execution, which holds $INSTANCE (label $CLAIM_LABEL=$HOLDER): a duplicate delivery, not running it again"
    exit 0
  fi
  slot_window_open 2
}

# slot_window_open STEP: exit 10 when START_DEADLINE has passed (and the run is not a retry's
# getting its run back): before the VM starts (step 2), and again just before the run is posted
# (step 5: the boot may have used the time).
slot_window_open() {
  local late
  ((SLOTTED)) && [[ -n $START_DEADLINE ]] && ((!SLOT_RETRY)) || return 0
  late=$(($(epoch) - SLOT_EPOCH))
  ((late > START_DEADLINE)) || return 0
  die "$EX_TOO_LATE" "step $1/6: too late for slot $RUN_SLOT: ${late}s after it, past START_DEADLINE=${START_DEADLINE}s (by $(slot_deadline_words)); the job is not started"
}

# slot_start_by: when the agent may start a new run of the slot at the latest (UTC, ISO 8601),
# "" when any time will do: the agent refuses a new run after it, so that no retry, however it
# came, starts the job past START_DEADLINE (a run it gives back is not new).
slot_start_by() {
  ((SLOTTED)) && [[ -n $START_DEADLINE ]] || return 0
  stamp_in UTC0 '%Y-%m-%dT%H:%M:%SZ' "$((SLOT_EPOCH + START_DEADLINE))"
}

# slot_started RUN_ID [STATUS]: the agent accepted the run (or gave back one that STATUS already):
# the VM's labels say so (claim_relabel).
slot_started() {
  ((SLOTTED)) || return 0
  SLOT_RUN=$1 SLOT_STATE=${2:-started}
  claim_relabel "the slot's record (vm-job-slot=$SLOT_LABEL, run $1)"
}

# slot_ended STATE: how the run ended (its record's status, or the orchestrator's word for an end
# it saw otherwise: timed-out, vm-gone, unknown), for the record written when the claim is given
# back; the first word stands.
slot_ended() {
  [[ -n $SLOT_RUN && $SLOT_STATE == started ]] || return 0
  SLOT_STATE=$1
}

# with_slot_record LABELS: the labels (JSON members) with this execution's record of its slot
# in place of any earlier one (unchanged until the agent accepted a run, and in test mode).
with_slot_record() {
  local labels=$1
  [[ -n $SLOT_RUN ]] || { printf '%s' "$labels"; return 0; }
  labels=$(sed -E "s/$SLOT_LABELS_RE//g; s/,\$//" <<<"$labels")
  labels+="${labels:+,}\"vm-job-slot\":\"$SLOT_LABEL\",\"vm-job-slot-run\":\"$SLOT_RUN\""
  labels+=",\"vm-job-slot-execution\":\"$(slot_execution)\",\"vm-job-slot-state\":\"$SLOT_STATE\""
  printf '%s' "$labels"
}

# read_slot_record: RAN_SLOT, RAN_RUN, RAN_EXECUTION, RAN_STATE from OTHER_LABELS.
read_slot_record() {
  local name key re
  RAN_SLOT="" RAN_RUN="" RAN_EXECUTION="" RAN_STATE=""
  for name in SLOT RUN EXECUTION STATE; do
    key=vm-job-slot
    [[ $name == SLOT ]] || key+="-${name,,}"
    re="\"$key\":\"([^\"]*)\""
    if [[ $OTHER_LABELS =~ $re ]]; then printf -v "RAN_$name" '%s' "${BASH_REMATCH[1]}"; fi
  done
}

# slot_execution: this execution's name as a label value (lowercase, at most 63 characters): one
# that is longer (a job name of 57 characters or more, and Cloud Run's 6 of its own) is its first
# 50 characters and a digest of the whole name, so two executions never share one.
slot_execution() {
  local name=${CLOUD_RUN_EXECUTION:-manual} digest
  name=${name,,}
  name=${name//[^a-z0-9_-]/-}
  if ((${#name} > 63)); then
    digest=$(printf '%s' "$CLOUD_RUN_EXECUTION" | sha256sum)
    name="${name:0:50}-${digest:0:12}"
  fi
  printf '%s' "$name"
}

# slot_label_epoch LABEL: the epoch of a slot label (20261202t0900z).
slot_label_epoch() {
  date -u -d "${1:0:4}-${1:4:2}-${1:6:2} ${1:9:2}:${1:11:2}" +%s
}

# slot_label_words LABEL: a slot label as UTC ISO 8601 (2026-12-02T09:00Z).
slot_label_words() { printf '%s-%s-%sT%s:%sZ' "${1:0:4}" "${1:4:2}" "${1:6:2}" "${1:9:2}" "${1:11:2}"; }

# slot_status: `status`'s lines: the last slot that ran here, the next one due, and a WARNING
# when the latest slot passed with no run.
slot_status() {
  local grace
  read_slot_record
  if [[ -z $SCHEDULE ]]; then
    printf 'slot      not scheduled (SCHEDULE is not set)\n'
    return 0
  fi
  slot_of
  if [[ -n $RAN_SLOT ]]; then
    printf 'slot      last ran: %s (execution %s, run %s, %s)\n' "$(slot_label_words "$RAN_SLOT")" \
      "$RAN_EXECUTION" "$RAN_RUN" "$RAN_STATE"
  else
    printf 'slot      last ran: none recorded on this VM\n'
  fi
  printf 'slot      next: %s\n' "$NEXT_SLOT"
  grace=${START_DEADLINE:-$BOOT_TIMEOUT}
  if [[ $RAN_SLOT != "$SLOT_LABEL" && $(claim_slot "${HOLDER:-}") != "$SLOT_LABEL" ]] &&
    (($(epoch) - SLOT_EPOCH > grace)); then
    log WARNING "slot $RUN_SLOT passed with no run on $INSTANCE (more than ${grace}s ago)"
  fi
}
