# shellcheck shell=bash
# orchestrator/settings.sh: the configuration, checked before any cloud call (a bad value is one
# line and exit 2), with the defaults of docs/orchestrator.md's settings table; the token put away.
#
# Sets (read by all, never written after check_config): the settings named in entrypoint.sh's
#   header with their defaults, COMPUTE_API (the Compute API's root URL), INSTANCE and
#   STATIC_NAME (this task's, from INSTANCES), WORK_DIR (this execution's private directory:
#   the token's header file, each call's scratch files; removed by finish).
# The token itself is written to $WORK_DIR/auth and unset: no other module sees it, but token.sh,
# which writes a rotated one there.
# Needs: logging.sh.

readonly NAME_RE='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'
WORK_DIR=""

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# check_config [COMMAND]: every setting checked and defaulted; `status` needs no AGENT_TOKEN (it
# then lists no runs), `run` and `logs` do.
check_config() {
  local name command=${1:-run} missing=()
  for name in PROJECT_ID REGION ZONE STATIC_NAME; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  [[ -v AGENT_TOKEN || $command == status || $command == check ]] || missing+=(AGENT_TOKEN)
  if [[ -z ${INSTANCE:-} && -z ${INSTANCES:-} ]]; then
    missing+=("INSTANCE (or INSTANCES)")
  fi
  ((${#missing[@]} == 0)) || die "$EX_CONFIG" "configuration: ${missing[*]} required (see docs/orchestrator.md, \"Settings\")"

  AGENT_PORT=${AGENT_PORT:-8000}
  MODE=${MODE:-run}
  BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
  RUN_TIMEOUT=${RUN_TIMEOUT:-3600}
  STOP_TIMEOUT=${STOP_TIMEOUT:-180}
  API_TIMEOUT=${API_TIMEOUT:-120}
  HEALTH_INTERVAL=${HEALTH_INTERVAL:-0.2}
  KEEP_VM=${KEEP_VM:-0}
  ACCESS_CONFIG_NAME=${ACCESS_CONFIG_NAME:-External NAT}
  NETWORK_INTERFACE=${NETWORK_INTERFACE:-nic0}
  AGENT_TLS=${AGENT_TLS:-1}
  AGENT_ADDRESS=${AGENT_ADDRESS:-static}
  PIN_WAIT=${PIN_WAIT:-20}
  FALLBACK_MACHINE_TYPES=${FALLBACK_MACHINE_TYPES:-}
  SCHEDULE=${SCHEDULE:-}
  TIME_ZONE=${TIME_ZONE:-UTC}
  START_DEADLINE=${START_DEADLINE:-}
  RERUN_FAILED=${RERUN_FAILED:-0}
  COMPUTE_API=${CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE:-https://compute.googleapis.com/compute/v1/}
  SECRETMANAGER_API=${CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER:-https://secretmanager.googleapis.com/}
  AGENT_TOKEN_SECRET=${AGENT_TOKEN_SECRET:-}

  for name in BOOT_TIMEOUT RUN_TIMEOUT STOP_TIMEOUT API_TIMEOUT PIN_WAIT; do
    { is_uint "${!name}" && ((${!name} > 0)); } ||
      die "$EX_CONFIG" "configuration: $name must be a whole number of seconds > 0, not '${!name}'"
  done
  { is_uint "$AGENT_PORT" && ((AGENT_PORT >= 1 && AGENT_PORT <= 65535)); } ||
    die "$EX_CONFIG" "configuration: AGENT_PORT must be a port number (1-65535), not '$AGENT_PORT'"
  [[ $HEALTH_INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] ||
    die "$EX_CONFIG" "configuration: HEALTH_INTERVAL must be seconds, like 0.2, not '$HEALTH_INTERVAL'"
  [[ $MODE == run || $MODE == test ]] ||
    die "$EX_CONFIG" "configuration: MODE must be 'run' or 'test', not '$MODE'"
  [[ $KEEP_VM == 0 || $KEEP_VM == 1 ]] ||
    die "$EX_CONFIG" "configuration: KEEP_VM must be 0 or 1, not '$KEEP_VM'"
  [[ $AGENT_TLS == 0 || $AGENT_TLS == 1 ]] ||
    die "$EX_CONFIG" "configuration: AGENT_TLS must be 0 or 1, not '$AGENT_TLS'"
  [[ $AGENT_ADDRESS == static || $AGENT_ADDRESS == internal ]] ||
    die "$EX_CONFIG" "configuration: AGENT_ADDRESS must be 'static' or 'internal', not '$AGENT_ADDRESS'"
  [[ $NETWORK_INTERFACE =~ ^nic[0-9]+$ ]] ||
    die "$EX_CONFIG" "configuration: NETWORK_INTERFACE must look like nic0, not '$NETWORK_INTERFACE'"
  [[ -n $ACCESS_CONFIG_NAME ]] || die "$EX_CONFIG" "configuration: ACCESS_CONFIG_NAME must not be empty"
  [[ -z $START_DEADLINE ]] || { is_uint "$START_DEADLINE" && ((START_DEADLINE > 0)); } ||
    die "$EX_CONFIG" "configuration: START_DEADLINE must be a whole number of seconds > 0, not '$START_DEADLINE'"
  [[ -z $START_DEADLINE || -n $SCHEDULE ]] ||
    die "$EX_CONFIG" "configuration: START_DEADLINE needs SCHEDULE (the deadline is counted from the scheduled time)"
  [[ $RERUN_FAILED == 0 || $RERUN_FAILED == 1 ]] ||
    die "$EX_CONFIG" "configuration: RERUN_FAILED must be 0 or 1, not '$RERUN_FAILED'"
  [[ -z $FALLBACK_MACHINE_TYPES || $FALLBACK_MACHINE_TYPES =~ ^[a-z][-a-z0-9]*(,[a-z][-a-z0-9]*)*$ ]] ||
    die "$EX_CONFIG" "configuration: FALLBACK_MACHINE_TYPES must be machine types separated by commas, like e2-medium,n2-standard-2, not '$FALLBACK_MACHINE_TYPES'"
  [[ -z $AGENT_TOKEN_SECRET || $AGENT_TOKEN_SECRET =~ ^[A-Za-z0-9_-]{1,255}$ ]] ||
    die "$EX_CONFIG" "configuration: AGENT_TOKEN_SECRET must be a secret's name (letters, digits, - and _), not '$AGENT_TOKEN_SECRET'"
  for name in REGION ZONE; do
    [[ ${!name} =~ $NAME_RE ]] || die "$EX_CONFIG" "configuration: $name '${!name}' is not a valid name"
  done
  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/entrypoint.XXXXXX")
  [[ ! -v AGENT_TOKEN ]] || check_token
  pick_instance
}

# have_token: true when this execution holds the agent's token (always, but for `status`).
have_token() { [[ -s $WORK_DIR/auth ]]; }

# The token is checked and written to a private header file with tracing off, then removed
# from the environment: it never reaches a log, a trace, or a child process.
check_token() {
  local xtrace=0
  [[ $- == *x* ]] && xtrace=1
  { set +x; } 2>/dev/null
  local problem=""
  if ((${#AGENT_TOKEN} < 16)); then
    problem="AGENT_TOKEN must be at least 16 characters (it is ${#AGENT_TOKEN})"
  elif [[ $AGENT_TOKEN =~ [[:space:][:cntrl:]] ]]; then
    problem="AGENT_TOKEN must not contain spaces or control characters"
  else
    (umask 077 && printf 'Authorization: Bearer %s\n' "$AGENT_TOKEN" >"$WORK_DIR/auth")
  fi
  unset AGENT_TOKEN
  ((xtrace)) && set -x
  [[ -z $problem ]] || die "$EX_CONFIG" "configuration: $problem"
}

# pick_instance: this task's instance and address (INSTANCES: the one at its index). A Cloud Run
# job with more tasks than instances would run the job more than once on one VM: exit 2.
pick_instance() {
  local -a names addresses
  local index=${CLOUD_RUN_TASK_INDEX:-0} count=${CLOUD_RUN_TASK_COUNT:-1} vms=1
  is_uint "$count" || die "$EX_CONFIG" "configuration: CLOUD_RUN_TASK_COUNT must be a number, not '$count'"
  if [[ -n ${INSTANCES:-} ]]; then
    IFS=, read -r -a names <<<"$INSTANCES"
    vms=${#names[@]}
  fi
  if ((count > vms)); then
    if [[ -n ${INSTANCES:-} ]]; then
      die "$EX_CONFIG" "configuration: the job has $count tasks (CLOUD_RUN_TASK_COUNT) but INSTANCES names $vms VMs: each task needs a VM of its own; deploy the job with --tasks=$vms, or name $count VMs in INSTANCES"
    fi
    die "$EX_CONFIG" "configuration: the job has $count tasks (CLOUD_RUN_TASK_COUNT) but INSTANCE names one VM: each task needs a VM of its own; deploy the job with --tasks=1, or name $count VMs in INSTANCES"
  fi
  if [[ -n ${INSTANCES:-} ]]; then
    [[ -z ${INSTANCE:-} ]] || die "$EX_CONFIG" "configuration: set INSTANCE or INSTANCES, not both"
    is_uint "$index" || die "$EX_CONFIG" "configuration: CLOUD_RUN_TASK_INDEX must be a number, not '$index'"
    IFS=, read -r -a names <<<"$INSTANCES"
    IFS=, read -r -a addresses <<<"$STATIC_NAME"
    ((index < ${#names[@]})) ||
      die "$EX_CONFIG" "configuration: task index $index is out of range: INSTANCES has ${#names[@]} names ($INSTANCES)"
    if ((${#addresses[@]} != ${#names[@]})); then
      die "$EX_CONFIG" "configuration: STATIC_NAME needs one address per instance (${#names[@]}, comma-separated, in the order of INSTANCES), got ${#addresses[@]}"
    fi
    INSTANCE=${names[index]}
    STATIC_NAME=${addresses[index]}
  fi
  [[ $INSTANCE =~ $NAME_RE ]] || die "$EX_CONFIG" "configuration: instance name '$INSTANCE' is not a valid name"
  [[ $STATIC_NAME =~ $NAME_RE ]] || die "$EX_CONFIG" "configuration: address name '$STATIC_NAME' is not a valid name"
}
