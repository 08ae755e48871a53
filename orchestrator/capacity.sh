# shellcheck shell=bash
# orchestrator/capacity.sh: a zone without capacity for the VM: Compute Engine ends the start's
# operation with ZONE_RESOURCE_POOL_EXHAUSTED (or …_WITH_DETAILS), the VM back at TERMINATED.
# Capacity comes and goes: the start is tried again with backoff within BOOT_TIMEOUT, first on
# each machine type of FALLBACK_MACHINE_TYPES (the stopped VM moved to it with setMachineType),
# then exit 9, "no capacity", with nothing left attached.
# The VM's own type is kept in the label vm-job-machine-type from the moment it is first moved
# away: each start tries it first (a VM left on a fallback type is moved back before it), a run
# on another type says so, and the cleanup moves it back once it is TERMINATED (then the label
# goes).
#
# Sets (results): NO_CAPACITY_CODE (start_refused_for_capacity). Private: MACHINE_TYPES (the
#   VM's own type, then the fallbacks), TYPE_NOW (the type it has now, "" until start_vm looks),
#   CAPACITY_TRIES, CAPACITY_DELAY.
# Reads: the settings, BOOT_DEADLINE (vm.sh), OTHER_LABELS, INSTANCE_TYPE and INSTANCE_STATUS
#   (claim.sh's read_labels). Needs: logging.sh, children.sh, compute.sh, claim.sh
#   (claim_relabel).

readonly HOME_TYPE_LABEL=vm-job-machine-type
NO_CAPACITY_CODE=""
MACHINE_TYPES=()
TYPE_NOW=""
CAPACITY_TRIES=0 CAPACITY_DELAY=2

# start_refused_for_capacity: true when the start that just failed was refused for capacity,
# the error's code in NO_CAPACITY_CODE.
start_refused_for_capacity() {
  gcloud_said "$NO_CAPACITY_RE" || return 1
  NO_CAPACITY_CODE=$(gcloud_stderr | grep -oE "$NO_CAPACITY_RE" | head -n 1)
}

# wait_for_capacity: after a stockout, what to start next: the next machine type of this round
# (at once), or, each refused, the first again after a wait (2 s, doubling to 30 s); past
# BOOT_DEADLINE, exit 9.
wait_for_capacity() {
  local at
  CAPACITY_TRIES=$((CAPACITY_TRIES + 1))
  log WARNING "step 3/6: zone $ZONE has no capacity for $INSTANCE as $TYPE_NOW ($NO_CAPACITY_CODE)"
  at=$(type_index "$TYPE_NOW")
  if ((at + 1 < ${#MACHINE_TYPES[@]})); then
    (($(epoch) + 5 < BOOT_DEADLINE)) || no_capacity # no time left to move it and start it
    set_machine_type "${MACHINE_TYPES[at + 1]}"
    return
  fi
  # another start is worth it only with time left for it (a gcloud start takes seconds)
  (($(epoch) + CAPACITY_DELAY + 5 < BOOT_DEADLINE)) || no_capacity

  log INFO "step 3/6: starting $INSTANCE again in ${CAPACITY_DELAY}s (until BOOT_TIMEOUT=${BOOT_TIMEOUT}s)"
  nap "$CAPACITY_DELAY"
  CAPACITY_DELAY=$((CAPACITY_DELAY * 2 > 30 ? 30 : CAPACITY_DELAY * 2))
  [[ $TYPE_NOW == "${MACHINE_TYPES[0]}" ]] || set_machine_type "${MACHINE_TYPES[0]}"
}

# type_index TYPE: TYPE's place in MACHINE_TYPES (0 when it is none of them).
type_index() {
  local i
  for i in "${!MACHINE_TYPES[@]}"; do
    [[ ${MACHINE_TYPES[i]} != "$1" ]] || { printf '%s' "$i" && return; }
  done
  printf 0
}

# no_capacity: exit 9, naming the zone, the machine types tried and the error.
no_capacity() {
  local type=${MACHINE_TYPES[*]}
  die "$EX_NO_CAPACITY" "step 3/6: no capacity: zone $ZONE could not start $INSTANCE as ${type// / or } within BOOT_TIMEOUT=${BOOT_TIMEOUT}s ($NO_CAPACITY_CODE, $CAPACITY_TRIES $(plural "$CAPACITY_TRIES" try tries)). Try again later, in another zone, or with FALLBACK_MACHINE_TYPES (docs/deploy.md)"
}

# no_capacity_if_refused_before: a start cut off by BOOT_TIMEOUT after stockouts is exit 9 too.
no_capacity_if_refused_before() { ((CAPACITY_TRIES == 0)) || no_capacity; }

# machine_types: from the labels just read (claim.sh's read_labels), the VM's own type (its label
# vm-job-machine-type, else the type it has), then FALLBACK_MACHINE_TYPES' others, in order; and
# the type it has now.
machine_types() {
  local -a fallbacks
  local type home re="\"$HOME_TYPE_LABEL\":\"([^\"]+)\""
  TYPE_NOW=$INSTANCE_TYPE home=$INSTANCE_TYPE
  [[ ! $OTHER_LABELS =~ $re ]] || home=${BASH_REMATCH[1]}
  MACHINE_TYPES=("$home")
  IFS=, read -r -a fallbacks <<<"$FALLBACK_MACHINE_TYPES"
  for type in "${fallbacks[@]}"; do
    [[ " ${MACHINE_TYPES[*]} " == *" $type "* ]] || MACHINE_TYPES+=("$type")
  done
}

# start_on_home_type: before the first start: a VM that an earlier run left on a fallback type
# (TERMINATED) is moved back to its own, which is tried first.
start_on_home_type() {
  machine_types
  [[ -n $TYPE_NOW && $TYPE_NOW != "${MACHINE_TYPES[0]}" && $INSTANCE_STATUS == TERMINATED ]] || return 0
  log INFO "step 3/6: $INSTANCE is on $TYPE_NOW, left there by an earlier run: moving it back to its own type ${MACHINE_TYPES[0]} first"
  set_machine_type "${MACHINE_TYPES[0]}"
}

# set_machine_type TYPE: the stopped VM moved to TYPE (gcloud, within BOOT_DEADLINE). Before it
# first leaves its own type, the label says which that is.
set_machine_type() {
  if [[ $1 != "${MACHINE_TYPES[0]}" ]]; then
    log INFO "step 3/6: moving $INSTANCE from $TYPE_NOW to $1 (FALLBACK_MACHINE_TYPES)"
    local re="\"$HOME_TYPE_LABEL\":\"${MACHINE_TYPES[0]}\""
    TYPE_NOW=$1 # from here it may be on it: the label says which type is its own
    [[ $OTHER_LABELS =~ $re ]] ||
      claim_relabel "$INSTANCE's own machine type (label $HOME_TYPE_LABEL=${MACHINE_TYPES[0]})"
  else
    log INFO "step 3/6: moving $INSTANCE from $TYPE_NOW back to its own type $1"
  fi
  gcloud_call "$BOOT_DEADLINE" compute instances set-machine-type "$INSTANCE" --zone="$ZONE" \
    --machine-type="$1" || {
    ! gcloud_said "$TRANSIENT_RE" || no_capacity # cut off at BOOT_TIMEOUT: the stockout's exit 9
    die "$EX_CLOUD" "step 3/6: moving $INSTANCE to $1: $(last_error)"
  }
  TYPE_NOW=$1
}

# with_home_type LABELS: the labels (JSON members) with vm-job-machine-type saying the VM's own
# type while it is on another, and without it once it is back (unchanged before start_vm looks).
with_home_type() {
  local labels=$1
  [[ -n $TYPE_NOW ]] || { printf '%s' "$labels"; return 0; }
  labels=$(sed -E "s/\"$HOME_TYPE_LABEL\":\"[^\"]*\",?//g; s/,\$//" <<<"$labels")
  [[ $TYPE_NOW == "${MACHINE_TYPES[0]}" ]] || labels+="${labels:+,}\"$HOME_TYPE_LABEL\":\"${MACHINE_TYPES[0]}\""
  printf '%s' "$labels"
}

# started_as: once the VM runs on a type not its own, say so: it is moved back once stopped.
started_as() {
  [[ -n $TYPE_NOW && $TYPE_NOW != "${MACHINE_TYPES[0]}" ]] || return 0
  log WARNING "step 3/6: $INSTANCE runs as $TYPE_NOW, not its own type ${MACHINE_TYPES[0]} (label $HOME_TYPE_LABEL): the cleanup moves it back once it is TERMINATED"
}

# restore_home_type DEADLINE: the cleanup's step, once the VM is TERMINATED: back to its own type
# (setMachineType with curl), and the label goes at the claim's release; false if that failed.
restore_home_type() {
  local t0 rc=0 error=""
  [[ -n $TYPE_NOW && ${#MACHINE_TYPES[@]} -gt 0 && $TYPE_NOW != "${MACHINE_TYPES[0]}" ]] || return 0
  t0=$(now)
  compute_api POST "zones/$ZONE/instances/$INSTANCE/setMachineType" -H 'Content-Type: application/json' \
    --data "{\"machineType\":\"zones/$ZONE/machineTypes/${MACHINE_TYPES[0]}\"}"
  follow_operation "$1" || rc=$?
  ((rc != 0)) || ! error=$(operation_error) || rc=1
  if ((rc != 0)); then
    log ERROR "cleanup: could not move $INSTANCE back to its own type ${MACHINE_TYPES[0]}: ${error:-$API_ERROR} (the next run's start moves it first)"
    return 1
  fi
  TYPE_NOW=${MACHINE_TYPES[0]} # the label goes with the claim's release
  log INFO "cleanup: moved $INSTANCE back to its own type ${MACHINE_TYPES[0]} ($(since "$t0")s)"
}
