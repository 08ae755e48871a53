# shellcheck shell=bash
# orchestrator/claim.sh: one execution at a time on a VM.
#
# An execution holds its VM by the label vm-job-owner=<until>-<owner> on the instance, written
# with setLabels and the labelFingerprint read just before: of two executions that write at once
# only one wins (Compute refuses a stale fingerprint, with HTTP 412 or an operation that ends with
# that error). Only the holder attaches, starts, stops or detaches anything. It takes the claim
# before step 2 changes anything and gives it back as the last step of its cleanup, after the VM
# is TERMINATED and the address detached; another execution that finds it exits 3 at once,
# having touched nothing. <until> (epoch seconds) is when the holder would be past all of its
# timeouts, so the claim of an execution that was killed lapses then; <owner> is a hash of
# CLOUD_RUN_EXECUTION/CLOUD_RUN_TASK_INDEX, so a retried task takes its own claim back; with
# SCHEDULE, -<slot> follows (slot.sh: a duplicate sees which slot the holder runs). A value
# of another form (an operator's `maintenance`) never lapses.
#
# Sets (results of read_labels): LABEL_FP, HOLDER (the claim's value, "" when none),
#   OTHER_LABELS (the instance's other labels, as JSON members); CLAIM_ERROR (what went wrong
#   when read_labels or set_labels returns non-zero).
# Private: CLAIMED (1 while this execution holds the claim), CLAIM (its value); CLAIM_OWNER
#   (its <owner>, read by slot.sh).
# Reads: the settings, SLOT_LABEL (slot.sh). Needs: logging.sh, children.sh, compute.sh, vm.sh
#   (note_run_limit), slot.sh (slot_check, with_slot_record).

readonly CLAIM_LABEL=vm-job-owner
CLAIMED=0
CLAIM="" CLAIM_OWNER=""
CLAIM_ERROR=""

# claim_vm: take the claim, or exit 3 if another execution holds it.
claim_vm() {
  local t0 until deadline rc delay=1
  t0=$(now)
  need_token
  until=$(($(date +%s) + 3 * API_TIMEOUT + BOOT_TIMEOUT + RUN_TIMEOUT + STOP_TIMEOUT + 60))
  CLAIM_OWNER=$(owner_id) # once: by hand it is random
  deadline=$(($(date +%s) + API_TIMEOUT))
  while :; do
    rc=0
    read_labels || rc=$?
    if ((rc == 0)); then
      slot_check # a slot that ran, or that another execution runs, or that is too late: exit here
      CLAIM="$until-$CLAIM_OWNER${SLOT_LABEL:+-$SLOT_LABEL}"
      if [[ -n $HOLDER && $(claim_owner "$HOLDER") != "$CLAIM_OWNER" ]] && ! claim_lapsed "$HOLDER"; then
        die "$EX_BUSY" "step 2/6: $INSTANCE is busy: another execution holds it (label $CLAIM_LABEL=$HOLDER, $(claim_lapse "$HOLDER")); leaving the VM and its address alone. If none is running, remove the claim: gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=$CLAIM_LABEL"
      fi
      if [[ -n $HOLDER ]]; then
        if claim_lapsed "$HOLDER"; then
          log WARNING "step 2/6: $INSTANCE's claim $HOLDER lapsed (its execution was killed?): taking it over"
        else
          log WARNING "step 2/6: $INSTANCE's claim $HOLDER is this task's, from an earlier attempt: taking it back"
        fi
      fi
      set_labels "$CLAIM" || rc=$?
    fi
    case $rc in
      0)
        CLAIMED=1
        log INFO "step 2/6: claimed $INSTANCE for this execution (label $CLAIM_LABEL=$CLAIM; if this execution is killed, it $(claim_lapse "$CLAIM")) ($(since "$t0")s)"
        return
        ;;
      2) log INFO "step 2/6: $INSTANCE's labels changed while claiming it: reading them again" ;;
      3) ;;
      *)
        [[ $API_CODE != 403 ]] || CLAIM_ERROR+=". The job's service account needs compute.instances.get and compute.instances.setLabels"
        die "$EX_CLOUD" "step 2/6: claiming $INSTANCE (label $CLAIM_LABEL): $CLAIM_ERROR"
        ;;
    esac
    (($(date +%s) + delay <= deadline)) ||
      die "$EX_CLOUD" "step 2/6: claiming $INSTANCE: still failing at API_TIMEOUT=${API_TIMEOUT}s: $CLAIM_ERROR"
    if ((rc == 3)); then
      log WARNING "step 2/6: claiming $INSTANCE: transient error, retrying in ${delay}s: $CLAIM_ERROR"
      nap "$delay"
      delay=$((delay * 2 > 16 ? 16 : delay * 2))
    fi
  done
}

# release_claim: the cleanup's last step; false if the claim could not be given back.
release_claim() {
  local try rc
  ((CLAIMED)) || return 0
  for try in 1 2 3 4 5 6; do
    rc=0
    read_labels || rc=$?
    if ((rc == 0)) && [[ $HOLDER != "$CLAIM" ]]; then
      CLAIMED=0
      log WARNING "cleanup: $INSTANCE's claim is not this execution's any more (${HOLDER:-none}): leaving it"
      return 0
    fi
    ((rc == 0)) && { set_labels "" || rc=$?; }
    if ((rc == 0)); then
      CLAIMED=0
      log INFO "cleanup: released $INSTANCE's claim"
      return 0
    fi
    ((rc == 1)) && break
    ((rc == 3)) && nap "$try"
  done
  log ERROR "cleanup: could not release $INSTANCE's claim ($CLAIM_LABEL=$CLAIM): $CLAIM_ERROR. Other executions exit 3 until it lapses ($(claim_lapse "$CLAIM")), or remove it: gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=$CLAIM_LABEL"
  return 1
}

# claim_keep: the claim stays on the VM when this execution ends (KEEP_VM=1: the VM is being
# debugged): other executions exit 3 until it lapses or someone removes it.
claim_keep() { CLAIMED=0; }

# claim_description: this execution's claim, and when it lapses.
claim_description() { printf 'label %s=%s, %s' "$CLAIM_LABEL" "$CLAIM" "$(claim_lapse "$CLAIM")"; }

# owner_id: who claims: a hash of the Cloud Run task (its retries are the same owner), or a
# random one by hand.
owner_id() {
  if [[ -n ${CLOUD_RUN_EXECUTION:-} ]]; then
    printf '%s/%s' "$CLOUD_RUN_EXECUTION" "${CLOUD_RUN_TASK_INDEX:-0}" | sha256sum | cut -c1-12
  else
    od -An -N6 -tx1 /dev/urandom | tr -d ' \n'
  fi
}

# claim_owner VALUE, claim_slot VALUE: the <owner> and the <slot> of a claim's value
# <until>-<owner>[-<slot>] ("" when it has none).
claim_owner() { [[ $1 =~ ^[0-9]+-([0-9a-f]+) ]] && printf '%s' "${BASH_REMATCH[1]}" || true; }
claim_slot() { [[ $1 =~ ^[0-9]+-[0-9a-f]+-([0-9]{8}t[0-9]{4}z)$ ]] && printf '%s' "${BASH_REMATCH[1]}" || true; }

# claim_relabel WHAT: the labels written again with this execution's claim (and its slot's
# record, slot.sh), the fingerprint read anew if they changed meanwhile; a WARNING if it fails.
claim_relabel() {
  local try rc
  ((CLAIMED)) || return 0
  for try in 1 2 3 4 5; do
    rc=0
    read_labels || rc=$?
    ((rc == 0)) && { set_labels "$CLAIM" || rc=$?; }
    ((rc == 0)) && return 0
    ((rc == 1)) && break
    ((rc == 3)) && nap "$try"
  done
  log WARNING "could not write $1 on $INSTANCE's labels: $CLAIM_ERROR (a duplicate execution is still stopped by the agent's Idempotency-Key)"
}

# claim_lapsed VALUE: true when VALUE is <until>-<owner> and <until> has passed.
claim_lapsed() { [[ $1 =~ ^([0-9]+)- ]] && ((BASH_REMATCH[1] < $(date +%s))); }

# claim_lapse VALUE: when a claim lapses: "lapses at <UTC time>", or "never lapses" for a value
# not of the form <until>-<owner>.
claim_lapse() {
  if [[ $1 =~ ^([0-9]+)- ]]; then
    printf 'lapses at %s' "$(date -u -d "@${BASH_REMATCH[1]}" +%Y-%m-%dT%H:%M:%SZ)"
  else
    printf 'never lapses'
  fi
}

# read_labels: GET the instance; sets LABEL_FP, HOLDER (our label's value, "" if none) and
# OTHER_LABELS (the others, as JSON members to write back). Returns 0, or 3 for a transient
# error and 1 for another (in CLAIM_ERROR).
read_labels() {
  local rest k v
  local fp_re='"labelFingerprint":[[:space:]]*"([^"]*)"'
  local labels_re='"labels":[[:space:]]*\{([^}]*)\}'
  local pair_re='^[[:space:],]*"([^"]*)":[[:space:]]*"([^"]*)"(.*)$'
  LABEL_FP="" HOLDER="" OTHER_LABELS=""
  compute_api GET "zones/$ZONE/instances/$INSTANCE?fields=labels,labelFingerprint,scheduling"
  labels_outcome || return $?
  note_run_limit # the same answer holds the VM's own guard (vm.sh)
  [[ $API_BODY =~ $fp_re ]] && LABEL_FP=${BASH_REMATCH[1]}
  if [[ $API_BODY =~ $labels_re ]]; then
    rest=${BASH_REMATCH[1]}
    while [[ $rest =~ $pair_re ]]; do
      k=${BASH_REMATCH[1]} v=${BASH_REMATCH[2]} rest=${BASH_REMATCH[3]}
      if [[ $k == "$CLAIM_LABEL" ]]; then
        HOLDER=$v
      else
        OTHER_LABELS+="${OTHER_LABELS:+,}\"$k\":\"$v\""
      fi
    done
  fi
}

# labels_outcome: api_outcome for the label calls, its error in CLAIM_ERROR.
labels_outcome() {
  local rc=0
  CLAIM_ERROR=""
  api_outcome || rc=$?
  ((rc == 0)) || CLAIM_ERROR=$API_ERROR
  return "$rc"
}

# set_labels VALUE: setLabels with LABEL_FP: the other labels as read, ours set to VALUE (or
# removed when VALUE is ""), and the operation followed until DONE. Returns 0 when done, 2 when
# the fingerprint was stale (the labels changed since read_labels), 3 for a transient error,
# 1 for another (in CLAIM_ERROR).
set_labels() {
  local labels rc=0
  labels=$(with_slot_record "$OTHER_LABELS")
  [[ -z $1 ]] || labels+="${labels:+,}\"$CLAIM_LABEL\":\"$1\""
  compute_api POST "zones/$ZONE/instances/$INSTANCE/setLabels" \
    -H 'Content-Type: application/json' --data "{\"labels\":{$labels},\"labelFingerprint\":\"$LABEL_FP\"}"
  follow_operation $(($(date +%s) + API_TIMEOUT)) || rc=$?
  if ((rc == 3)) && [[ $API_CODE == 200 ]]; then
    CLAIM_ERROR="the setLabels operation was not done within ${API_TIMEOUT}s"
    return 3
  fi
  labels_outcome || return $?
  if operation_error >/dev/null; then # the operation ended with an error
    CLAIM_ERROR="setLabels failed: $(api_message)"
    [[ $API_BODY =~ \"httpErrorStatusCode\":[[:space:]]*412 || $API_BODY == *CONDITION_NOT_MET* ]] &&
      return 2
    return 1
  fi
}
