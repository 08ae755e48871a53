# shellcheck shell=bash
# orchestrator/check.sh: `check [SLOT]`: did a scheduled slot run and succeed? Read-only, like
# status: it reads the VM's own record of the last slot that ran on it (slot.sh's labels) and its
# claim, and never starts, stops, attaches or claims anything. deploy.sh schedules it as a second
# Cloud Scheduler job running the same Cloud Run job with `check`, START_DEADLINE + CHECK_MARGIN
# after each slot: a slot that did not run, whatever stopped it (a paused or deleted scheduler
# job, every attempt finding the VM busy, an image that cannot start), becomes a failed execution,
# which the alert policy on failed executions reports (docs/alerts.md).
#
# The slot checked is SLOT (ISO 8601 with its offset, like 2026-12-07T09:00+09:00, or a slot
# label, like 20261207t0000z), or else the latest one due at or before now - START_DEADLINE -
# CHECK_MARGIN (without START_DEADLINE, BOOT_TIMEOUT: status's grace). Exit 0 when it succeeded,
# or when its run is under way within its window; exit 12 (EX_MISSED, "slot missed") when its run
# failed, was cut off, is still running past its window (START_DEADLINE + RUN_TIMEOUT +
# STOP_TIMEOUT + CHECK_MARGIN after the slot), never started, or its record was replaced by a
# later slot's (it cannot be confirmed); exit 2 without SCHEDULE, for a SLOT that is not one of
# SCHEDULE's fire times, or one in the future.
#
# Sets (results): CHECK_CODE (0 or 12), CHECK_WORDS (what the record says), CHECK_GRACE,
#   CHECK_WINDOW (seconds after the slot by which its run has ended).
# Reads: the settings (SCHEDULE, TIME_ZONE, START_DEADLINE, BOOT_TIMEOUT, RUN_TIMEOUT,
#   STOP_TIMEOUT, CHECK_MARGIN), HOLDER and OTHER_LABELS (claim.sh's read_labels).
# Needs: logging.sh, compute.sh (need_token), claim.sh (read_labels, claim_slot), slot.sh
#   (slot_of, read_slot_record, slot_label_words, RUN_SLOT, SLOT_LABEL, SLOT_EPOCH).

CHECK_CODE=0 CHECK_WORDS="" CHECK_GRACE=0 CHECK_WINDOW=0

# check_settings: CHECK_MARGIN, the grace and the window; exit 2 without SCHEDULE.
check_settings() {
  [[ -n $SCHEDULE ]] ||
    die "$EX_CONFIG" "configuration: check needs SCHEDULE (and TIME_ZONE): it checks the slots SCHEDULE fires"
  CHECK_MARGIN=${CHECK_MARGIN:-60}
  is_uint "$CHECK_MARGIN" ||
    die "$EX_CONFIG" "configuration: CHECK_MARGIN must be a whole number of seconds, not '$CHECK_MARGIN'"
  CHECK_GRACE=${START_DEADLINE:-$BOOT_TIMEOUT}
  CHECK_WINDOW=$((CHECK_GRACE + RUN_TIMEOUT + STOP_TIMEOUT + CHECK_MARGIN))
}

# check_target NOW [SLOT]: the slot to check (slot.sh's SLOT_EPOCH, RUN_SLOT, SLOT_LABEL): SLOT,
# which must be a fire time of SCHEDULE no later than NOW, or the latest one due at or before
# NOW - CHECK_GRACE - CHECK_MARGIN.
check_target() {
  local now=$1 given=${2:-} epoch
  if [[ -z $given ]]; then
    slot_of "$((now - CHECK_GRACE - CHECK_MARGIN))"
    return 0
  fi
  if [[ $given =~ ^[0-9]{8}t[0-9]{4}z$ ]]; then
    epoch=$(slot_label_epoch "$given")
  else
    epoch=$(date -d "$given" +%s 2>/dev/null) ||
      die "$EX_CONFIG" "check: '$given' is not a time (like 2026-12-07T09:00+09:00, or a slot label like 20261207t0000z)"
  fi
  slot_of "$epoch"
  ((SLOT_EPOCH == epoch)) ||
    die "$EX_CONFIG" "check: $given is not a slot of SCHEDULE '$SCHEDULE' in $TIME_ZONE (the one before it is $RUN_SLOT)"
  ((epoch <= now)) || die "$EX_CONFIG" "check: slot $RUN_SLOT is in the future"
}

# slot_verdict NOW: CHECK_CODE and CHECK_WORDS for the slot check_target chose, from the record
# read_labels left (RAN_*, HOLDER), at time NOW.
slot_verdict() {
  local now=$1 held=0 until ran_words
  read_slot_record
  if [[ $HOLDER =~ ^([0-9]+)- ]] && [[ $(claim_slot "$HOLDER") == "$SLOT_LABEL" ]]; then
    until=${BASH_REMATCH[1]}
    ((until < now)) || held=1
  fi
  ran_words="execution $RAN_EXECUTION, run $RAN_RUN"
  CHECK_CODE=$EX_MISSED
  if [[ $RAN_SLOT == "$SLOT_LABEL" ]]; then
    case $RAN_STATE in
      succeeded)
        CHECK_CODE=0 CHECK_WORDS="succeeded ($ran_words)" ;;
      started)
        if ((now > SLOT_EPOCH + CHECK_WINDOW)); then
          CHECK_WORDS="still running past its window: its run started ($ran_words) and should have ended by $(stamp_in "$TIME_ZONE" '%Y-%m-%dT%H:%M:%S%z' "$((SLOT_EPOCH + CHECK_WINDOW))")"
        elif ((held)); then
          CHECK_CODE=0 CHECK_WORDS="under way ($ran_words): its own execution reports how it ends (a failure alerts)"
        else
          CHECK_WORDS="cut off: its run started ($ran_words), but that execution ended without recording how the run ended (its claim is gone or lapsed)"
        fi
        ;;
      *) CHECK_WORDS="its run ended ${RAN_STATE:-without a state} ($ran_words)" ;;
    esac
    return 0
  fi
  if ((now <= SLOT_EPOCH + CHECK_GRACE)); then
    CHECK_CODE=0 CHECK_WORDS="not started yet, and it may still start (by $(stamp_in "$TIME_ZONE" '%Y-%m-%dT%H:%M:%S%z' "$((SLOT_EPOCH + CHECK_GRACE))"))"
  elif ((held)); then
    CHECK_WORDS="never started: an execution holds $INSTANCE for it (label $CLAIM_LABEL=$HOLDER), but its run was not started by $(stamp_in "$TIME_ZONE" '%Y-%m-%dT%H:%M:%S%z' "$((SLOT_EPOCH + CHECK_GRACE))")"
  elif [[ -n $RAN_SLOT && $RAN_SLOT > $SLOT_LABEL ]]; then
    CHECK_WORDS="cannot be confirmed: $INSTANCE's record now holds a later slot, $(slot_label_words "$RAN_SLOT") ($RAN_STATE, $ran_words); a check runs before the next slot when slots are further apart than START_DEADLINE + CHECK_MARGIN"
  elif [[ -n $RAN_SLOT ]]; then
    CHECK_WORDS="never started: the last slot that ran on $INSTANCE is $(slot_label_words "$RAN_SLOT") ($RAN_STATE, $ran_words)"
  else
    CHECK_WORDS="never started: no slot has run on $INSTANCE"
  fi
}

# check_slot [SLOT]: the command: the slot's record read and judged; exit 0 or 12.
check_slot() {
  local now t0
  t0=$(now)
  now=$(epoch)
  check_settings
  step check
  check_target "$now" "${1:-}"
  log INFO "check: slot $RUN_SLOT of SCHEDULE '$SCHEDULE' in $TIME_ZONE${1:+ (as given)}${1:-, the latest due by now - ${CHECK_GRACE}s - CHECK_MARGIN=${CHECK_MARGIN}s}, on $INSTANCE's record"
  need_token
  read_labels || die "$EX_CLOUD" "check: could not read $INSTANCE's record: $CLAIM_ERROR"
  slot_verdict "$now"
  if ((CHECK_CODE == 0)); then
    log INFO "check: slot $RUN_SLOT $CHECK_WORDS ($(since "$t0")s)"
    printf 'slot %s: %s\n' "$RUN_SLOT" "$CHECK_WORDS"
  else
    printf 'slot %s: missed: %s\n' "$RUN_SLOT" "$CHECK_WORDS"
    die "$EX_MISSED" "check: slot $RUN_SLOT missed: $CHECK_WORDS ($(since "$t0")s; docs/alerts.md says what to do)"
  fi
}
