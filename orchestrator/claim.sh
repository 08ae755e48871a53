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
# CLOUD_RUN_EXECUTION/CLOUD_RUN_TASK_INDEX, so a retried task takes its own claim back; with a
# slot, -<slot> follows (slot.sh: a duplicate sees which slot the holder runs). A value of
# another form (an operator's `maintenance`) never lapses.
# A claim of this task's earlier attempt, or one that lapsed, is taken over before anything is
# decided, with what its execution left (the VM up, the address attached): every exit of this
# execution, an early one too (a duplicate, too late), then cleans them up. A cleanup that could
# not finish in the time a signal leaves gives the claim back lapsed, so the next execution does.
# A claim write whose answer was lost counts as possibly taken: the cleanup looks, and gives it
# back if it is there.
#
# Sets (results of read_labels): LABEL_FP, HOLDER (the claim's value, "" when none),
#   OTHER_LABELS (the instance's other labels, as JSON members), INSTANCE_STATUS, INSTANCE_TYPE
#   (its machine type), INSTANCE_NAT (the natIP of its access config ACCESS_CONFIG_NAME, "" when
#   none); CLAIM_ERROR (what went wrong when read_labels or set_labels returns non-zero).
# Private: CLAIMED (1 while this execution may hold the claim), CLAIM (its value), CLAIM_PENDING
#   (1 while a claim write's outcome is unknown: sent, its answer lost); CLAIM_OWNER (its
#   <owner>, read by slot.sh).
# Reads: the settings, SLOT_LABEL and SLOTTED (slot.sh). Needs: logging.sh, children.sh,
#   compute.sh, vm.sh (note_run_limit, vm_adopt), address.sh (address_adopt), slot.sh
#   (slot_check, slot_of_claim, with_slot_record), capacity.sh (with_home_type).

readonly CLAIM_LABEL=vm-job-owner
readonly MAX_LABELS=64 # Compute Engine's limit on a resource's labels
CLAIMED=0 CLAIM_PENDING=0
CLAIM="" CLAIM_OWNER=""
CLAIM_ERROR=""
INSTANCE_STATUS="" INSTANCE_TYPE="" INSTANCE_NAT=""

# claim_vm: take the claim, or exit 3 if another execution holds it. A claim this execution may
# take over (its own earlier attempt's, or a lapsed one) is taken, with what it left, before the
# slot decides anything; otherwise the slot decides first, and a duplicate touches nothing.
claim_vm() {
  local t0 until deadline rc delay=1 takeover=0 told=""
  t0=$(now)
  need_token
  until=$(($(epoch) + 3 * API_TIMEOUT + BOOT_TIMEOUT + RUN_TIMEOUT + STOP_TIMEOUT + 60))
  CLAIM_OWNER=$(owner_id) # once: by hand it is random
  deadline=$(($(epoch) + API_TIMEOUT))
  while :; do
    rc=0
    read_labels || rc=$?
    if ((rc == 0)) && [[ -n $CLAIM && $HOLDER == "$CLAIM" ]]; then
      CLAIM_PENDING=0
      log INFO "step 2/6: the claim written before landed, though its answer was lost"
    elif ((rc == 0)); then
      check_label_room
      takeover=0
      if [[ -n $HOLDER ]] && { [[ $(claim_owner "$HOLDER") == "$CLAIM_OWNER" ]] || claim_lapsed "$HOLDER"; }; then
        takeover=1
        [[ -n $told ]] || { told=1 && log WARNING "step 2/6: $(takeover_words)"; }
        [[ $(claim_owner "$HOLDER") != "$CLAIM_OWNER" ]] || slot_of_claim "$HOLDER"
      else
        slot_check # a slot that ran, or that another execution runs, or that is too late: exit here
        if [[ -n $HOLDER ]]; then
          die "$EX_BUSY" "step 2/6: $INSTANCE is busy: another execution holds it (label $CLAIM_LABEL=$HOLDER, $(claim_lapse "$HOLDER")); leaving the VM and its address alone. If none is running, remove the claim: gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=$CLAIM_LABEL"
        fi
      fi
      CLAIM="$until-$CLAIM_OWNER${SLOT_LABEL:+-$SLOT_LABEL}"
      CLAIMED=1 CLAIM_PENDING=1 # from the moment the write is sent: its answer may be lost
      set_labels "$CLAIM" || rc=$?
      ((rc == 3)) || CLAIM_PENDING=0
    fi
    case $rc in
      0)
        log INFO "step 2/6: claimed $INSTANCE for this execution (label $CLAIM_LABEL=$CLAIM; if this execution is killed, it $(claim_lapse "$CLAIM")) ($(since "$t0")s)"
        if ((takeover)); then
          adopt_leftovers
          slot_check # decided now: an exit here cleans up what the earlier holder left
        fi
        return
        ;;
      2) log INFO "step 2/6: $INSTANCE's labels changed while claiming it: reading them again" ;;
      3) ;;
      *)
        [[ $API_CODE != 403 ]] || CLAIM_ERROR+=". The job's service account needs compute.instances.get and compute.instances.setLabels"
        die "$EX_CLOUD" "step 2/6: claiming $INSTANCE (label $CLAIM_LABEL): $CLAIM_ERROR"
        ;;
    esac
    (($(epoch) + delay <= deadline)) ||
      die "$EX_CLOUD" "step 2/6: claiming $INSTANCE: still failing at API_TIMEOUT=${API_TIMEOUT}s: $CLAIM_ERROR"
    if ((rc == 3)); then
      log WARNING "step 2/6: claiming $INSTANCE: transient error, retrying in ${delay}s: $CLAIM_ERROR"
      nap "$delay"
      delay=$((delay * 2 > 16 ? 16 : delay * 2))
    fi
  done
}

# takeover_words: what claim_vm says of a claim it takes over (HOLDER), and what it finds.
takeover_words() {
  local whose="lapsed (its execution was killed, or its cleanup could not finish): taking it over"
  [[ $(claim_owner "$HOLDER") != "$CLAIM_OWNER" ]] || whose="is this task's, from an earlier attempt: taking it back"
  local address="no address attached"
  [[ -z $INSTANCE_NAT ]] || address="address $INSTANCE_NAT attached"
  printf "%s's claim %s %s, with what it left (the VM %s, %s)" "$INSTANCE" "$HOLDER" "$whose" \
    "${INSTANCE_STATUS:-of unknown status}" "$address"
}

# adopt_leftovers: after a takeover, what the earlier holder left is this execution's to undo:
# a VM that is not TERMINATED (stopped in the cleanup), the access config (detached).
adopt_leftovers() {
  [[ $INSTANCE_STATUS == TERMINATED ]] || vm_adopt
  [[ -z $INSTANCE_NAT ]] || address_adopt "$INSTANCE_NAT"
}

# check_label_room: exit 5, touching nothing, when the instance has too many labels of its own for
# this flow's (the claim, the slot's four, the machine type's): one it could not write, it could
# never take away again.
check_label_room() {
  local others=0 needed=1 rest=$OTHER_LABELS key_re='^[[:space:],]*"([^"]*)":[[:space:]]*"[^"]*"(.*)$'
  ((SLOTTED)) && needed=$((needed + 4))
  [[ -z $FALLBACK_MACHINE_TYPES ]] || needed=$((needed + 1))
  while [[ $rest =~ $key_re ]]; do # the labels that are not this flow's (vm-job-...)
    [[ ${BASH_REMATCH[1]} == vm-job-* ]] || others=$((others + 1))
    rest=${BASH_REMATCH[2]}
  done
  ((others + needed <= MAX_LABELS)) ||
    die "$EX_CLOUD" "step 2/6: $INSTANCE has $others labels of its own, and this flow needs room for $needed more (Compute Engine allows $MAX_LABELS a resource): a claim it could not write back could never be given back; remove some (gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=KEY,...); nothing was touched"
}

# release_claim [--lapse]: the cleanup's last step; false if the claim could not be given back.
# With --lapse (the cleanup could not finish in the time a signal leaves), the claim stays, lapsed:
# the next execution takes it over and finishes the cleanup.
release_claim() {
  local try rc value="" lapse=${1:-}
  ((CLAIMED)) || return 0
  [[ -z $lapse ]] || value="$(($(epoch) - 1))-$CLAIM_OWNER${SLOT_LABEL:+-$SLOT_LABEL}"
  for try in 1 2 3 4 5 6; do
    rc=0
    read_labels || rc=$?
    if ((rc == 0)) && [[ $HOLDER != "$CLAIM" ]]; then
      ((CLAIM_PENDING)) && spend_claim_write
      CLAIMED=0
      [[ -z $HOLDER ]] || log WARNING "cleanup: $INSTANCE's claim is not this execution's any more ($HOLDER): leaving it"
      return 0
    fi
    ((rc == 0)) && { set_labels "$value" || rc=$?; }
    if ((rc == 0)); then
      CLAIMED=0
      if [[ -n $lapse ]]; then
        log WARNING "cleanup: left $INSTANCE's claim lapsed ($CLAIM_LABEL=$value): the next execution takes it over and finishes this cleanup"
      else
        log INFO "cleanup: released $INSTANCE's claim"
      fi
      return 0
    fi
    ((rc == 1)) && break
    ((rc == 3)) && nap "$try"
  done
  log ERROR "cleanup: could not release $INSTANCE's claim ($CLAIM_LABEL=$CLAIM): $CLAIM_ERROR. Other executions exit 3 until it lapses ($(claim_lapse "$CLAIM")), or remove it: gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=$CLAIM_LABEL"
  return 1
}

# spend_claim_write: a claim write whose answer was lost, and whose claim is not there (yet): the
# labels written again as they are, which changes their fingerprint, so that the write, should it
# still arrive, is refused (its fingerprint is stale) rather than leave a claim nobody gives back.
spend_claim_write() {
  local rc=0
  set_labels "$HOLDER" || rc=$?
  CLAIM_PENDING=0
  if ((rc == 0)); then
    log INFO "cleanup: the claim's write had no answer and its claim is not on $INSTANCE: its labels' fingerprint is renewed, so that write cannot land later"
  else
    log WARNING "cleanup: the claim's write had no answer, and renewing $INSTANCE's labels' fingerprint failed ($CLAIM_ERROR): if it lands, it lapses at $(claim_lapse "$CLAIM")"
  fi
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
claim_lapsed() { [[ $1 =~ ^([0-9]+)- ]] && ((BASH_REMATCH[1] < $(epoch))); }

# claim_lapse VALUE: when a claim lapses: "lapses at <UTC time>", or "never lapses" for a value
# not of the form <until>-<owner>.
claim_lapse() {
  if [[ $1 =~ ^([0-9]+)- ]]; then
    printf 'lapses at %s' "$(date -u -d "@${BASH_REMATCH[1]}" +%Y-%m-%dT%H:%M:%SZ)"
  else
    printf 'never lapses'
  fi
}

# read_labels: GET the instance; sets LABEL_FP, HOLDER (our label's value, "" if none),
# OTHER_LABELS (the others, as JSON members to write back), INSTANCE_STATUS, INSTANCE_TYPE and
# INSTANCE_NAT. Returns 0, or 3 for a transient error and 1 for another (in CLAIM_ERROR).
read_labels() {
  local rest k v
  local fp_re='"labelFingerprint":[[:space:]]*"([^"]*)"'
  local labels_re='"labels":[[:space:]]*\{([^}]*)\}'
  local pair_re='^[[:space:],]*"([^"]*)":[[:space:]]*"([^"]*)"(.*)$'
  local status_re='"status":[[:space:]]*"([A-Z_]+)"' type_re='"machineType":[[:space:]]*"[^"]*/([^"/]+)"'
  local nat_re="\\{[^{}]*\"name\":[[:space:]]*\"$ACCESS_CONFIG_NAME\"[^{}]*\\}" ip_re='"natIP":[[:space:]]*"([0-9.]+)"'
  LABEL_FP="" HOLDER="" OTHER_LABELS="" INSTANCE_STATUS="" INSTANCE_TYPE="" INSTANCE_NAT=""
  compute_api GET "zones/$ZONE/instances/$INSTANCE?fields=labels,labelFingerprint,scheduling,status,machineType,networkInterfaces"
  labels_outcome || return $?
  note_run_limit # the same answer holds the VM's own guard (vm.sh)
  [[ $API_BODY =~ $status_re ]] && INSTANCE_STATUS=${BASH_REMATCH[1]}
  [[ $API_BODY =~ $type_re ]] && INSTANCE_TYPE=${BASH_REMATCH[1]}
  if [[ $API_BODY =~ $nat_re ]] && [[ ${BASH_REMATCH[0]} =~ $ip_re ]]; then
    INSTANCE_NAT=${BASH_REMATCH[1]}
  fi
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
  labels=$(with_home_type "$(with_slot_record "$OTHER_LABELS")")
  [[ -z $1 ]] || labels+="${labels:+,}\"$CLAIM_LABEL\":\"$1\""
  compute_api POST "zones/$ZONE/instances/$INSTANCE/setLabels" \
    -H 'Content-Type: application/json' --data "{\"labels\":{$labels},\"labelFingerprint\":\"$LABEL_FP\"}"
  follow_operation $(($(epoch) + API_TIMEOUT)) || rc=$?
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
