# shellcheck shell=bash
# orchestrator/capacity.sh: a zone without capacity for the VM: Compute Engine ends the start's
# operation with ZONE_RESOURCE_POOL_EXHAUSTED (or …_WITH_DETAILS), the VM back at TERMINATED.
# Capacity comes and goes: the start is tried again with backoff within BOOT_TIMEOUT, first on
# each machine type of FALLBACK_MACHINE_TYPES (the stopped VM moved to it with setMachineType;
# it keeps the type that starts), then exit 9, "no capacity", with nothing left attached.
#
# Sets (results): NO_CAPACITY_CODE (start_refused_for_capacity). Private: MACHINE_TYPES (the
#   VM's type at the first stockout, then the fallbacks), TYPE_AT (the one it has now),
#   CAPACITY_TRIES, CAPACITY_DELAY.
# Reads: the settings, BOOT_DEADLINE (vm.sh). Needs: logging.sh, children.sh, compute.sh.

NO_CAPACITY_CODE=""
MACHINE_TYPES=()
TYPE_AT=0 CAPACITY_TRIES=0 CAPACITY_DELAY=2

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
  CAPACITY_TRIES=$((CAPACITY_TRIES + 1))
  ((${#MACHINE_TYPES[@]})) || machine_types
  log WARNING "step 3/6: zone $ZONE has no capacity for $INSTANCE as ${MACHINE_TYPES[TYPE_AT]} ($NO_CAPACITY_CODE)"
  if ((TYPE_AT + 1 < ${#MACHINE_TYPES[@]})); then
    (($(date +%s) + 5 < BOOT_DEADLINE)) || no_capacity # no time left to move it and start it
    set_machine_type $((TYPE_AT + 1))
    return
  fi
  # another start is worth it only with time left for it (a gcloud start takes seconds)
  (($(date +%s) + CAPACITY_DELAY + 5 < BOOT_DEADLINE)) || no_capacity

  log INFO "step 3/6: starting $INSTANCE again in ${CAPACITY_DELAY}s (until BOOT_TIMEOUT=${BOOT_TIMEOUT}s)"
  nap "$CAPACITY_DELAY"
  CAPACITY_DELAY=$((CAPACITY_DELAY * 2 > 30 ? 30 : CAPACITY_DELAY * 2))
  ((TYPE_AT == 0)) || set_machine_type 0
}

# no_capacity: exit 9, naming the zone, the machine types tried and the error.
no_capacity() {
  local type=${MACHINE_TYPES[*]}
  die "$EX_NO_CAPACITY" "step 3/6: no capacity: zone $ZONE could not start $INSTANCE as ${type// / or } within BOOT_TIMEOUT=${BOOT_TIMEOUT}s ($NO_CAPACITY_CODE, $CAPACITY_TRIES $(plural "$CAPACITY_TRIES" try tries)). Try again later, in another zone, or with FALLBACK_MACHINE_TYPES (docs/deploy.md)"
}

# no_capacity_if_refused_before: a start cut off by BOOT_TIMEOUT after stockouts is exit 9 too.
no_capacity_if_refused_before() { ((CAPACITY_TRIES == 0)) || no_capacity; }

# machine_types: the VM's machine type now, then FALLBACK_MACHINE_TYPES' others, in order.
machine_types() {
  local -a fallbacks
  local type
  gcloud_call "$BOOT_DEADLINE" compute instances describe "$INSTANCE" --zone="$ZONE" \
    --format='value(machineType.basename())' ||
    die "$EX_CLOUD" "step 3/6: reading $INSTANCE's machine type: $(last_error)"
  MACHINE_TYPES=("$GCLOUD_OUT")
  IFS=, read -r -a fallbacks <<<"$FALLBACK_MACHINE_TYPES"
  for type in "${fallbacks[@]}"; do
    [[ " ${MACHINE_TYPES[*]} " == *" $type "* ]] || MACHINE_TYPES+=("$type")
  done
}

# set_machine_type N: the stopped VM moved to MACHINE_TYPES[N].
set_machine_type() {
  log INFO "step 3/6: moving $INSTANCE from ${MACHINE_TYPES[TYPE_AT]} to ${MACHINE_TYPES[$1]} (FALLBACK_MACHINE_TYPES)"
  gcloud_call "$BOOT_DEADLINE" compute instances set-machine-type "$INSTANCE" --zone="$ZONE" \
    --machine-type="${MACHINE_TYPES[$1]}" || {
    ! gcloud_said "$TRANSIENT_RE" || no_capacity # cut off at BOOT_TIMEOUT: the stockout's exit 9
    die "$EX_CLOUD" "step 3/6: moving $INSTANCE to ${MACHINE_TYPES[$1]}: $(last_error)"
  }
  TYPE_AT=$1
}

# started_as: once the VM runs, what its type is when a stockout moved it (it keeps that type).
started_as() {
  ((TYPE_AT > 0)) || return 0
  log WARNING "step 3/6: $INSTANCE started as ${MACHINE_TYPES[TYPE_AT]}, not ${MACHINE_TYPES[0]}, and keeps that type (back: gcloud compute instances set-machine-type $INSTANCE --zone=$ZONE --machine-type=${MACHINE_TYPES[0]}, while it is stopped)"
}
