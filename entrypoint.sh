#!/usr/bin/env bash
# entrypoint.sh: the Cloud Run job. Claim the VM (one execution at a time), attach the static
# IP to it, start it, wait for its agent, run the job through the agent's API, print the job's
# log, and always stop the VM, detach the IP and give the claim back, for what this execution
# took on, whatever happens (trap on EXIT, INT, TERM).
# The token goes only over TLS to the key whose pin the VM published as the guest attribute
# vm-job-agent/tls-pin, read through the Compute API (README.md, "How the trust works").
#
# Required: PROJECT_ID REGION ZONE STATIC_NAME AGENT_TOKEN, and INSTANCE or INSTANCES.
# Optional (defaults in README.md, "The orchestrator"): AGENT_PORT MODE BOOT_TIMEOUT
#   RUN_TIMEOUT STOP_TIMEOUT API_TIMEOUT HEALTH_INTERVAL KEEP_VM ACCESS_CONFIG_NAME
#   NETWORK_INTERFACE AGENT_TLS AGENT_ADDRESS PIN_WAIT; from Cloud Run: CLOUD_RUN_JOB CLOUD_RUN_EXECUTION CLOUD_RUN_TASK_INDEX.
# Exit codes: 0 the run succeeded; 1 it failed, was cancelled or interrupted; 2 configuration;
#   3 the VM is busy (another execution holds its claim, or a run is in progress on it);
#   4 boot failed, or boot or run timeout; 5 Cloud API error;
#   6 the agent refused or answered nonsense, or its TLS key is not the one the VM published
#   (or the VM published none); 7 cleanup failed (the VM may still be up, or its claim was
#   not given back); 8 the VM went away during the run (stopped, preempted, deleted);
#   130/143 interrupted by SIGINT/SIGTERM.
# Only the job's log goes to stdout; everything else is a log line on stderr.
set -Eeuo pipefail

readonly EX_FAILED=1 EX_CONFIG=2 EX_BUSY=3 EX_TIMEOUT=4 EX_CLOUD=5 EX_AGENT=6 EX_CLEANUP=7
readonly EX_VM_GONE=8
readonly NAME_RE='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'
readonly GUEST_NAMESPACE=vm-job-agent
readonly PIN_ATTRIBUTE=$GUEST_NAMESPACE/tls-pin
readonly CLAIM_LABEL=vm-job-owner
# gcloud exits 1 for every error; these are the ones worth another try (HTTP 429 and 5xx,
# connection trouble, a VM still on its way to TERMINATED).
readonly TRANSIENT_RE='HTTPError (429|5[0-9][0-9])|[Rr]ate [Ll]imit|[Qq]uota exceeded|[Ii]nternal error|[Bb]ackend ?[Ee]rror|[Uu]navailable|[Tt]ry again|[Cc]onnection (refused|reset|aborted)|ConnectionError|[Tt]imed? ?out|[Tt]emporary failure|is not ready|resourceNotReady'

# State of this execution: what it took on, so cleanup undoes exactly that.
OWN_VM=0          # 1 once we ask the VM to start (or take over a running one)
OWN_IP=0          # 1 once we attach the address (or find it attached to our VM)
CLAIMED=0         # 1 while this execution holds the VM's claim (the label vm-job-owner)
CLAIM=""          # its value: <until epoch seconds>-<owner>
RUN_ID=""         # the agent's run this execution started or got back
RUN_ACTIVE=0      # 1 while that run may still be going
STATIC_IP=""
AGENT_URL=""
LOG_OFFSET=0      # how much of the run's log is on stdout (a partial last line: in pending)
LOG_STATUS=""
LOG_DONE=0        # 1 once the whole log is on stdout
PIN=""            # the agent's key as the VM published it; the token goes to no other key
PINNED=()         # curl's arguments that hold a connection to PIN
WATCHER_PID=""    # the background reader of the VM's guest attributes (pin, boot state)
IN_CLEANUP=0
WORK_DIR=""
CHILD_PID=""      # a long gcloud/curl in the background, killed by cleanup
CRITICAL=0        # 1 while stdout and LOG_OFFSET are being brought in step: a signal waits
DEFERRED=""       # the signal that came meanwhile ("CODE NAME")

# -- logging ---------------------------------------------------------------------------------

json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '%s' "$s"
}

# log SEVERITY MESSAGE...: one line on stderr; one-line JSON for Cloud Logging on Cloud Run.
log() {
  local severity=$1
  shift
  if [[ -n ${CLOUD_RUN_JOB:-} ]]; then
    printf '{"severity":"%s","message":"%s","instance":"%s"}\n' \
      "$severity" "$(json_escape "$*")" "$(json_escape "${INSTANCE:-}")" >&2
  else
    printf '%(%Y-%m-%dT%H:%M:%S)T %-7s %s\n' -1 "$severity" "$*" >&2
  fi
}

die() {
  local code=$1
  shift
  log ERROR "$*"
  exit "$code"
}

now() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }            # microseconds since the epoch

# since T0: seconds since T0 (from now), with two decimals.
since() {
  local d
  d=$(($(now) - $1))
  printf '%d.%02d' $((d / 1000000)) $((d / 10000 % 100))
}

# -- configuration ---------------------------------------------------------------------------

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

check_config() {
  local name missing=()
  for name in PROJECT_ID REGION ZONE STATIC_NAME; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  [[ -v AGENT_TOKEN ]] || missing+=(AGENT_TOKEN)
  if [[ -z ${INSTANCE:-} && -z ${INSTANCES:-} ]]; then
    missing+=("INSTANCE (or INSTANCES)")
  fi
  ((${#missing[@]} == 0)) || die "$EX_CONFIG" "configuration: ${missing[*]} required (see README.md, \"The orchestrator\")"

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
  COMPUTE_API=${CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE:-https://compute.googleapis.com/compute/v1/}

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
  for name in REGION ZONE; do
    [[ ${!name} =~ $NAME_RE ]] || die "$EX_CONFIG" "configuration: $name '${!name}' is not a valid name"
  done
  check_token
  pick_instance
}

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
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/entrypoint.XXXXXX")
    (umask 077 && printf 'Authorization: Bearer %s\n' "$AGENT_TOKEN" >"$WORK_DIR/auth")
  fi
  unset AGENT_TOKEN
  ((xtrace)) && set -x
  [[ -z $problem ]] || die "$EX_CONFIG" "configuration: $problem"
}

pick_instance() {
  local -a names addresses
  local index=${CLOUD_RUN_TASK_INDEX:-0}
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

# -- gcloud ----------------------------------------------------------------------------------

# gcloud_call DEADLINE_EPOCH ARGS...: run gcloud, bounded by the deadline, retrying transient
# failures with backoff until then. Its stdout is left in GCLOUD_OUT, its stderr in
# $WORK_DIR/gcloud.err (no command substitution: a TERM reaches the trap at once).
gcloud_call() {
  local deadline=$1 delay=1 rc budget
  shift
  GCLOUD_OUT=""
  while :; do
    rc=0
    budget=$((deadline - $(date +%s)))
    ((budget > 0)) || budget=1
    in_background "$WORK_DIR/gcloud.out" "$WORK_DIR/gcloud.err" \
      timeout -k 5 "$budget" gcloud "$@" --project="$PROJECT_ID" --quiet || rc=$?
    GCLOUD_OUT=$(<"$WORK_DIR/gcloud.out")
    ((rc == 0)) && return 0
    if ((rc == 124 || rc == 137)); then
      printf 'gcloud timed out after %ss\n' "$budget" >>"$WORK_DIR/gcloud.err"
      return "$rc"
    fi
    if ! grep -Eq "$TRANSIENT_RE" "$WORK_DIR/gcloud.err"; then
      return "$rc"
    fi
    if (($(date +%s) + delay > deadline)); then
      log ERROR "gcloud $1 $2: still failing at the deadline: $(last_error)"
      return "$rc"
    fi
    log WARNING "gcloud $1 $2 $3: transient error, retrying in ${delay}s: $(last_error)"
    nap "$delay"
    delay=$((delay * 2 > 16 ? 16 : delay * 2))
  done
}

last_error() { grep -v '^[[:space:]]*$' "$WORK_DIR/gcloud.err" | tr '\n' ' ' | cut -c1-400; }

# in_background OUT ERR CMD...: run CMD as a child we wait for, so a TERM reaches the trap at
# once, with its stdout and stderr in the files OUT and ERR. (The redirections are on the child
# only: on this call they would also hold the shell's own stderr while a trap runs.)
in_background() {
  local rc=0 out=$1 err=$2
  shift 2
  "$@" >"$out" 2>"$err" &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# nap SECONDS: a sleep we wait for as a child, so that SIGTERM or SIGINT runs the trap at once
# (bash runs a trap only when its foreground command ends: a plain `sleep 16` would hold back
# the cleanup, and Cloud Run's SIGKILL comes 10 s after its SIGTERM).
nap() {
  sleep "$1" &
  CHILD_PID=$!
  wait "$CHILD_PID" || true
  CHILD_PID=""
}

# -- the VM's claim: one execution at a time ---------------------------------------------------

# An execution holds its VM by the label vm-job-owner=<until>-<owner> on the instance, written
# with setLabels and the labelFingerprint read just before: of two executions that write at once
# only one wins (Compute refuses a stale fingerprint, with HTTP 412 or an operation that ends with
# that error). Only the holder attaches, starts, stops or detaches anything. It takes the claim
# before step 2 changes anything and gives it back as the last step of its cleanup, after the VM
# is TERMINATED and the address detached; another execution that finds it exits 3 at once,
# having touched nothing. <until> (epoch seconds) is when the holder would be past all of its
# timeouts, so the claim of an execution that was killed lapses then; <owner> is a hash of
# CLOUD_RUN_EXECUTION/CLOUD_RUN_TASK_INDEX, so a retried task takes its own claim back. A value
# of another form (an operator's `maintenance`) never lapses.

# claim_vm: take the claim, or exit 3 if another execution holds it.
claim_vm() {
  local t0 until deadline rc delay=1
  t0=$(now)
  need_token
  until=$(($(date +%s) + 3 * API_TIMEOUT + BOOT_TIMEOUT + RUN_TIMEOUT + STOP_TIMEOUT + 60))
  CLAIM="$until-$(owner_id)"
  deadline=$(($(date +%s) + API_TIMEOUT))
  while :; do
    rc=0
    read_labels || rc=$?
    if ((rc == 0)); then
      if [[ -n $HOLDER && ${HOLDER#*-} != "${CLAIM#*-}" ]] && ! claim_lapsed "$HOLDER"; then
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
        [[ $API_CODE != 403 ]] || API_ERROR+=". The job's service account needs compute.instances.get and compute.instances.setLabels"
        die "$EX_CLOUD" "step 2/6: claiming $INSTANCE (label $CLAIM_LABEL): $API_ERROR"
        ;;
    esac
    (($(date +%s) + delay <= deadline)) ||
      die "$EX_CLOUD" "step 2/6: claiming $INSTANCE: still failing at API_TIMEOUT=${API_TIMEOUT}s: $API_ERROR"
    if ((rc == 3)); then
      log WARNING "step 2/6: claiming $INSTANCE: transient error, retrying in ${delay}s: $API_ERROR"
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
  log ERROR "cleanup: could not release $INSTANCE's claim ($CLAIM_LABEL=$CLAIM): $API_ERROR. Other executions exit 3 until it lapses ($(claim_lapse "$CLAIM")), or remove it: gcloud compute instances remove-labels $INSTANCE --zone=$ZONE --labels=$CLAIM_LABEL"
  return 1
}

# owner_id: who claims: a hash of the Cloud Run task (its retries are the same owner), or a
# random one by hand.
owner_id() {
  if [[ -n ${CLOUD_RUN_EXECUTION:-} ]]; then
    printf '%s/%s' "$CLOUD_RUN_EXECUTION" "${CLOUD_RUN_TASK_INDEX:-0}" | sha256sum | cut -c1-12
  else
    od -An -N6 -tx1 /dev/urandom | tr -d ' \n'
  fi
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
# error and 1 for another (in API_ERROR).
read_labels() {
  local rest k v
  local fp_re='"labelFingerprint":[[:space:]]*"([^"]*)"'
  local labels_re='"labels":[[:space:]]*\{([^}]*)\}'
  local pair_re='^[[:space:],]*"([^"]*)":[[:space:]]*"([^"]*)"(.*)$'
  LABEL_FP="" HOLDER="" OTHER_LABELS=""
  compute_api GET "zones/$ZONE/instances/$INSTANCE?fields=labels,labelFingerprint"
  api_outcome || return $?
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

# set_labels VALUE: setLabels with LABEL_FP: the other labels as read, ours set to VALUE (or
# removed when VALUE is ""), and the operation followed until DONE. Returns 0 when done, 2 when
# the fingerprint was stale (the labels changed since read_labels), 3 for a transient error,
# 1 for another (in API_ERROR).
set_labels() {
  local labels=$OTHER_LABELS deadline
  local name_re='"name":[[:space:]]*"([^"]+)"' done_re='"status":[[:space:]]*"DONE"'
  [[ -z $1 ]] || labels+="${labels:+,}\"$CLAIM_LABEL\":\"$1\""
  deadline=$(($(date +%s) + API_TIMEOUT))
  compute_api POST "zones/$ZONE/instances/$INSTANCE/setLabels" \
    -H 'Content-Type: application/json' --data "{\"labels\":{$labels},\"labelFingerprint\":\"$LABEL_FP\"}"
  while [[ $API_CODE == 200 && ! $API_BODY =~ $done_re && $API_BODY =~ $name_re ]]; do
    (($(date +%s) < deadline)) || {
      API_ERROR="the setLabels operation was not done within ${API_TIMEOUT}s"
      return 3
    }
    compute_api POST "zones/$ZONE/operations/${BASH_REMATCH[1]}/wait"
  done
  api_outcome || return $?
  if [[ $API_BODY =~ \"error\":[[:space:]]*\{ ]]; then # the operation ended with an error
    API_ERROR="setLabels failed: $(api_message)"
    [[ $API_BODY =~ \"httpErrorStatusCode\":[[:space:]]*412 || $API_BODY == *CONDITION_NOT_MET* ]] &&
      return 2
    return 1
  fi
}

# api_outcome: 0 for HTTP 200; else API_ERROR says what, and 2 for a stale fingerprint (412),
# 3 for what is worth another try (no answer, 429, 5xx), 1 for the rest.
api_outcome() {
  [[ $API_CODE == 200 ]] && return 0
  if [[ $API_CODE == 000 ]]; then
    API_ERROR="no answer from the Compute API: ${API_CURL_ERROR:0:300}"
    return 3
  fi
  API_ERROR="HTTP $API_CODE: $(api_message)"
  case $API_CODE in
    412) return 2 ;;
    429 | 5??) return 3 ;;
    *) return 1 ;;
  esac
}

api_message() {
  local BODY=$API_BODY msg
  msg=$(json_field message)
  printf '%s' "${msg:-${API_BODY:0:300}}"
}

# compute_api METHOD PATH [CURL ARGS...]: one Compute API call (PATH is under
# projects/PROJECT_ID/) with curl and the access token, as gcloud would make it: a few ms, where
# a gcloud call costs half a second of start-up. Sets API_CODE, API_BODY (on one line) and
# API_CURL_ERROR. An expired token (401) is renewed once. Its files are this process's own: the
# guest-attribute watcher calls it too.
compute_api() {
  local method=$1 path=$2 try f=$WORK_DIR/api.$BASHPID
  shift 2
  for try in 1 2; do
    rm -f "$f.json"
    in_background "$f.code" "$f.err" \
      curl -sS -X "$method" --connect-timeout 5 --max-time 30 -o "$f.json" \
      -w '%{http_code}' -H @"$WORK_DIR/api-auth" "$@" "${COMPUTE_API%/}/projects/$PROJECT_ID/$path" || true
    API_CODE=$(<"$f.code")
    [[ $API_CODE =~ ^[0-9]{3}$ ]] || API_CODE=000
    API_BODY=""
    [[ -f $f.json ]] && API_BODY=$(tr '\n' ' ' <"$f.json")
    API_CURL_ERROR=$(tr '\n' ' ' <"$f.err")
    [[ $API_CODE == 401 && $try == 1 ]] && api_token && continue
    return 0
  done
}

# The access token for the Compute API calls made with curl (the claim, the address, the guest
# attributes), from gcloud once (a child we wait for, so a TERM reaches the trap at once).
need_token() {
  [[ -s $WORK_DIR/api-auth ]] || in_background /dev/null /dev/null api_token ||
    die "$EX_CLOUD" "gcloud auth print-access-token failed: $(pin_error)"
}

# -- the agent -------------------------------------------------------------------------------

# agent METHOD PATH MAX_TIME [CURL ARGS...]: a call that carries the token; with AGENT_TLS=1
# only over TLS to the pinned key (curl checks the pin before it sends a byte of the request).
# Sets HTTP_CODE, BODY, CURL_ERROR as call_agent does. Another key at the address ends the
# execution (exit 6), except during cleanup, which goes on.
agent() {
  local method=$1 path=$2 max_time=$3
  shift 3
  if ((AGENT_TLS)) && [[ -z $PIN ]]; then
    HTTP_CODE=000 BODY="" CURL_ERROR="the agent's key is not verified yet: nothing sent" CURL_RC=1
    return
  fi
  call_agent "$method" "$path" "$max_time" -H @"$WORK_DIR/auth" "${PINNED[@]}" "$@"
  if ((CURL_RC == 90 && !IN_CLEANUP)); then
    impostor
  fi
}

# call_agent METHOD PATH MAX_TIME [CURL ARGS...]: sets HTTP_CODE and BODY; HTTP_CODE 000 when
# the agent could not be reached, with curl's reason in CURL_ERROR and its exit code in CURL_RC.
call_agent() {
  local method=$1 path=$2 max_time=$3
  shift 3
  HTTP_CODE=000
  BODY=""
  CURL_ERROR=""
  CURL_RC=0
  rm -f "$WORK_DIR/body"
  in_background "$WORK_DIR/code" "$WORK_DIR/curl.err" \
    curl -sS -X "$method" --connect-timeout 3 --max-time "$max_time" \
    -o "$WORK_DIR/body" -w '%{http_code}' "$@" "$AGENT_URL$path" || CURL_RC=$?
  HTTP_CODE=$(<"$WORK_DIR/code")
  [[ $HTTP_CODE =~ ^[0-9]{3}$ ]] || HTTP_CODE=000
  [[ -f $WORK_DIR/body ]] || : >"$WORK_DIR/body"
  if [[ -z ${RAW_BODY:-} || $HTTP_CODE != 200 ]]; then # a log chunk stays in the file only
    BODY=$(<"$WORK_DIR/body")
  fi
  CURL_ERROR=$(tr '\n' ' ' <"$WORK_DIR/curl.err")
}

# health: GET / without the token (it needs none and says nothing secret); over TLS, any key
# may answer it: the key is checked before the first call that carries the token.
health() {
  if ((AGENT_TLS)); then
    call_agent GET / 3 -k
  else
    call_agent GET / 3
  fi
}

# json_field NAME: a string or number field of the JSON object in BODY ("" when absent/null).
json_field() {
  local re_str="\"$1\":\"(([^\"\\\\]|\\\\.)*)\"" re_num="\"$1\":(-?[0-9]+)"
  if [[ $BODY =~ $re_str ]]; then
    local v=${BASH_REMATCH[1]}
    v=${v//\\\"/\"}
    v=${v//\\n/ }
    printf '%s' "${v//\\\\/\\}"
  elif [[ $BODY =~ $re_num ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
  fi
}

is_transient_http() { [[ $HTTP_CODE == 000 || $HTTP_CODE == 429 || $HTTP_CODE == 5?? ]]; }

# -- the steps -------------------------------------------------------------------------------

# 2. The VM claimed for this execution; then the static address, read after the claim (an
# execution that held the VM until a moment ago may have detached it since), attached to the
# VM's interface unless it already is.
attach_static_ip() {
  local t0 users self_link deadline
  t0=$(now)
  claim_vm
  deadline=$(($(date +%s) + API_TIMEOUT))
  read_address "$deadline"
  users=$ADDRESS_USERS
  self_link="/projects/$PROJECT_ID/zones/$ZONE/instances/$INSTANCE"
  if [[ -n $users ]]; then
    [[ $users == *"$self_link" ]] ||
      die "$EX_CLOUD" "static address $STATIC_NAME ($STATIC_IP) is in use by another resource: $users"
    OWN_IP=1
    log INFO "step 2/6: $STATIC_IP is already attached to $INSTANCE; keeping it ($(since "$t0")s)"
    return
  fi
  OWN_IP=1
  if ! add_access_config "$deadline"; then
    grep -q 'At most one access config' "$WORK_DIR/gcloud.err" ||
      die "$EX_CLOUD" "attaching $STATIC_IP to $INSTANCE: $(last_error)"
    replace_access_config "$deadline"
  fi
  log INFO "step 2/6: attached $STATIC_NAME ($STATIC_IP) to $INSTANCE/$NETWORK_INTERFACE ($(since "$t0")s)"
}

# read_address DEADLINE: STATIC_IP and ADDRESS_USERS (who uses it, "" when nobody) of the
# static address, through the Compute API with curl (transient errors retried until DEADLINE).
read_address() {
  local deadline=$1 delay=1 rc
  local ip_re='"address":[[:space:]]*"([0-9.]+)"' users_re='"users":[[:space:]]*\[([^]]*)\]'
  while :; do
    rc=0
    compute_api GET "regions/$REGION/addresses/$STATIC_NAME"
    api_outcome || rc=$?
    ((rc == 0)) && break
    ((rc == 3 && $(date +%s) + delay <= deadline)) ||
      die "$EX_CLOUD" "static address $STATIC_NAME in $REGION: $API_ERROR"
    log WARNING "reading static address $STATIC_NAME: transient error, retrying in ${delay}s: $API_ERROR"
    nap "$delay"
    delay=$((delay * 2 > 16 ? 16 : delay * 2))
  done
  STATIC_IP="" ADDRESS_USERS=""
  [[ $API_BODY =~ $ip_re ]] && STATIC_IP=${BASH_REMATCH[1]}
  [[ -n $STATIC_IP ]] || die "$EX_CLOUD" "static address $STATIC_NAME has no IP address"
  if [[ $API_BODY =~ $users_re ]]; then
    ADDRESS_USERS=${BASH_REMATCH[1]//[\" ]/}
  fi
}

add_access_config() {
  gcloud_call "$1" compute instances add-access-config "$INSTANCE" --zone="$ZONE" \
    --network-interface="$NETWORK_INTERFACE" --access-config-name="$ACCESS_CONFIG_NAME" \
    --address="$STATIC_IP"
}

replace_access_config() {
  local deadline=$1 old
  gcloud_call "$deadline" compute instances describe "$INSTANCE" --zone="$ZONE" \
    --format="value(networkInterfaces[${NETWORK_INTERFACE#nic}].accessConfigs[0].name)" ||
    die "$EX_CLOUD" "describing $INSTANCE: $(last_error)"
  old=$GCLOUD_OUT
  log WARNING "step 2/6: $INSTANCE/$NETWORK_INTERFACE has another access config ('$old'); replacing it"
  gcloud_call "$deadline" compute instances delete-access-config "$INSTANCE" --zone="$ZONE" \
    --network-interface="$NETWORK_INTERFACE" --access-config-name="$old" ||
    die "$EX_CLOUD" "removing access config '$old' from $INSTANCE: $(last_error)"
  add_access_config "$deadline" || die "$EX_CLOUD" "attaching $STATIC_IP to $INSTANCE: $(last_error)"
}

# 3. Start the VM (a running one is fine); gcloud returns once it is RUNNING.
start_vm() {
  local t0 deadline
  t0=$(now)
  BOOT_DEADLINE=$(($(date +%s) + BOOT_TIMEOUT))
  console_offset
  start_watcher
  OWN_VM=1
  gcloud_call "$BOOT_DEADLINE" compute instances start "$INSTANCE" --zone="$ZONE" || {
    grep -Eq "$TRANSIENT_RE" "$WORK_DIR/gcloud.err" &&
      die "$EX_TIMEOUT" "starting $INSTANCE: not started within BOOT_TIMEOUT=${BOOT_TIMEOUT}s: $(last_error)"
    die "$EX_CLOUD" "starting $INSTANCE: $(last_error)"
  }
  log INFO "step 3/6: $INSTANCE is RUNNING ($(since "$t0")s)"
  agent_url
}

# The agent's URL: the static IP, or the VM's internal address (AGENT_ADDRESS=internal, for a
# job with Direct VPC egress). gcloud's start names nic0's internal IP; another NIC is asked.
agent_url() {
  local address
  if [[ $AGENT_ADDRESS == static ]]; then
    address=$STATIC_IP
  else
    address=$(sed -n 's/^Instance internal IP is \([0-9.]*\)$/\1/p' "$WORK_DIR/gcloud.err")
    if [[ $NETWORK_INTERFACE != nic0 || -z $address ]]; then
      gcloud_call $(($(date +%s) + API_TIMEOUT)) compute instances describe "$INSTANCE" \
        --zone="$ZONE" --format="value(networkInterfaces[${NETWORK_INTERFACE#nic}].networkIP)" ||
        die "$EX_CLOUD" "reading $INSTANCE's internal address: $(last_error)"
      address=$GCLOUD_OUT
    fi
    [[ -n $address ]] || die "$EX_CLOUD" "$INSTANCE has no internal address on $NETWORK_INTERFACE"
  fi
  agent_url_of "$address"
}

# agent_url_of ADDRESS: the agent's URL on that address.
agent_url_of() {
  if ((AGENT_TLS)); then AGENT_URL="https://$1:$AGENT_PORT"; else AGENT_URL="http://$1:$AGENT_PORT"; fi
}

# The VM's guest attributes, watched in the background from just before the start until the
# agent answers: the key's pin (vm-job-agent/tls-pin) and the boot's state (vm-job-agent/boot:
# the step, `ready`, or `failed: <reason>`), both written by startup.sh at every boot and read
# through the Compute API, so IAM decides who may (compute.instances.getGuestAttributes). Every
# 0.2 s, with curl and one access token from gcloud (a gcloud start-up per read would cost 0.5 s
# of CPU each and lag): on no critical path. A pin from an earlier boot is the same key unless
# the VM made a new one (see reread_pin); a boot state counts once this boot has written one
# that is not a failure (an earlier boot's `failed:` is not this one's).
start_watcher() {
  (
    trap '[[ -n $CHILD_PID ]] && kill "$CHILD_PID" 2>/dev/null; exit 1' TERM
    local last="" relay_at=0
    while :; do
      if read_attributes; then
        if ((AGENT_TLS)) && [[ -n $PIN_READ && ! -s $WORK_DIR/pin ]]; then
          printf '%s' "$PIN_READ" >"$WORK_DIR/pin.tmp"
          mv -f "$WORK_DIR/pin.tmp" "$WORK_DIR/pin"
        fi
        [[ -z $BOOT_READ || $BOOT_READ == failed:* ]] || : >"$WORK_DIR/boot-progress"
        if [[ -n $BOOT_READ && -f $WORK_DIR/boot-progress && $BOOT_READ != "$last" ]]; then
          last=$BOOT_READ
          printf '%s' "$BOOT_READ" >"$WORK_DIR/boot-state.tmp"
          mv -f "$WORK_DIR/boot-state.tmp" "$WORK_DIR/boot-state"
          log INFO "[vm] boot: $BOOT_READ"
        fi
      fi
      if (($(now) >= relay_at)); then
        relay_at=$(($(now) + 2000000))
        if relay_console && [[ $(cat "$WORK_DIR/boot-state" 2>/dev/null) != failed:* ]]; then
          printf 'failed: %s' "$(console_error)" >"$WORK_DIR/boot-state.tmp"
          mv -f "$WORK_DIR/boot-state.tmp" "$WORK_DIR/boot-state"
        fi
      fi
      (($(date +%s) < BOOT_DEADLINE)) || exit 1
      nap 0.2
    done
  ) &
  WATCHER_PID=$!
}

# The reason of a boot that the script runner says failed: startup.sh's last ERROR line, or
# the runner's own ("the startup script failed with error: exit status N").
console_error() { cat "$WORK_DIR/console-error" 2>/dev/null || printf 'the startup script failed'; }

# relay_console: the VM's serial console from SERIAL_NEXT on, as `gcloud compute instances
# get-serial-port-output --start=N` reads it (GET instances/NAME/serialPort?port=1&start=N,
# with curl): each line the script runner marks as the startup script's (the newer runner's
# `Metadata key("startup-script"), command("…"): <line>`, the legacy `startup-script: <line>`)
# into our log, marked [vm]; a line cut at the end of the read waits for the rest. True when the
# runner says the script failed (`Script "startup-script" failed with error: …`).
relay_console() {
  local n next line severity reason failed=1 next_re='"next":[[:space:]]*"([0-9]+)"'
  compute_api GET "zones/$ZONE/instances/$INSTANCE/serialPort?port=1&start=$SERIAL_NEXT"
  [[ $API_CODE == 200 && $API_BODY =~ $next_re ]] || return 1
  next=${BASH_REMATCH[1]}
  { cat "$WORK_DIR/serial.partial" 2>/dev/null; console_text <<<"$API_BODY"; } >"$WORK_DIR/serial.txt"
  n=$(tr -dc '\n' <"$WORK_DIR/serial.txt" | wc -c) # complete lines; the rest waits
  tail -n +"$((n + 1))" "$WORK_DIR/serial.txt" >"$WORK_DIR/serial.partial"
  while IFS= read -r line; do
    line=${line#[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9] } # startup.sh's time
    severity=INFO
    [[ $line =~ ^startup\.sh\ (WARNING|ERROR) ]] && severity=${BASH_REMATCH[1]}
    if [[ $line == 'Script "startup-script" failed'* ]]; then
      severity=ERROR failed=0
      [[ -s $WORK_DIR/console-error ]] || printf 'the startup script %s' "${line#*\" }" >"$WORK_DIR/console-error"
    elif [[ $severity == ERROR ]]; then
      reason=${line#startup.sh ERROR}
      printf '%s' "${reason#"${reason%%[! ]*}"}" >"$WORK_DIR/console-error"
    fi
    log "$severity" "[vm] $line"
  done < <(head -n "$n" "$WORK_DIR/serial.txt" | startup_lines)
  SERIAL_NEXT=$next
  printf '%s' "$next" >"$WORK_DIR/serial-next"
  return "$failed"
}

# console_text: the `contents` of the serialPort answer on stdin (on one line), JSON-decoded.
console_text() {
  grep -oE '"contents":[[:space:]]*"([^"\\]|\\.)*"' | head -n 1 |
    sed -E -e 's/^"contents":[[:space:]]*"//' -e 's/"$//' -e 's/\\\\/\x01/g' -e 's/\\n/\n/g' \
      -e 's/\\"/"/g' -e 's/\\t/\t/g' -e 's/\\r//g' -e 's/\\\//\//g' \
      -e 's/\\u003[cC]/</g' -e 's/\\u003[eE]/>/g' -e 's/\\u0026/\&/g' -e "s/\\\\u0027/'/g" \
      -e 's/\\u003[dD]/=/g' -e 's/\\u00[01][0-9a-fA-F]//g' -e 's/\\u007[fF]//g' -e 's/\x01/\\/g' |
    head -c -1 # grep's newline after the match
}

# startup_lines: of the console's lines, the startup script's, without the runner's prefix;
# and the runner's line that says it failed.
startup_lines() {
  sed -n -E \
    -e '/Script "startup-script" failed with error: /{s/.*(Script "startup-script" failed with error: )/\1/p;d;}' \
    -e 's/Metadata key\("startup-script"\), command\("[^"]*"\): /\x02/' -e 't strip' \
    -e 's/startup-script: /\x02/' -e 't strip' -e 'd' \
    -e ':strip' -e 's/^[^\x02]*\x02//p'
}

# relay_rest: once the watcher is stopped, what the VM's console got since its last read.
relay_rest() {
  [[ -s $WORK_DIR/serial-next ]] || return 0
  SERIAL_NEXT=$(<"$WORK_DIR/serial-next")
  relay_console || true
}

# console_offset: where the serial console ends before this start (its earlier boots' lines are
# not relayed); 0 if it cannot be read.
console_offset() {
  local next_re='"next":[[:space:]]*"([0-9]+)"'
  SERIAL_NEXT=0
  compute_api GET "zones/$ZONE/instances/$INSTANCE/serialPort?port=1&fields=next"
  [[ $API_CODE == 200 && $API_BODY =~ $next_re ]] && SERIAL_NEXT=${BASH_REMATCH[1]}
  printf '%s' "$SERIAL_NEXT" >"$WORK_DIR/serial-next"
}

# api_token: an access token for the Compute API from gcloud (on Cloud Run, the job's service
# account), written to a private header file; it is never printed.
api_token() {
  local tmp=$WORK_DIR/api-auth.tmp
  if (umask 077 && { printf 'Authorization: Bearer ' && timeout -k 2 30 gcloud auth \
    print-access-token --quiet; } >"$tmp" 2>"$WORK_DIR/pin.err"); then
    mv -f "$tmp" "$WORK_DIR/api-auth"
    return 0
  fi
  rm -f "$tmp"
  return 1
}

# read_attributes: one read of the VM's vm-job-agent/ guest attributes (GET
# instances/NAME/getGuestAttributes?queryPath=vm-job-agent/, at the endpoint gcloud uses); true
# when there are any, with the pin in PIN_READ and the boot's state in BOOT_READ ("" if absent).
read_attributes() {
  local pin_re='"key":[[:space:]]*"tls-pin",[[:space:]]*"value":[[:space:]]*"(sha256//[A-Za-z0-9+/]{43}=)"'
  local boot_re='"key":[[:space:]]*"boot",[[:space:]]*"value":[[:space:]]*"(([^"\\]|\\.)*)"'
  PIN_READ="" BOOT_READ=""
  compute_api GET "zones/$ZONE/instances/$INSTANCE/getGuestAttributes?queryPath=$GUEST_NAMESPACE/"
  if ! api_outcome; then
    printf '%s\n' "$API_ERROR" >"$WORK_DIR/pin.err"
    return 1
  fi
  [[ $API_BODY =~ $pin_re ]] && PIN_READ=${BASH_REMATCH[1]}
  [[ $API_BODY =~ $boot_re ]] && BOOT_READ=${BASH_REMATCH[1]//\\\"/\"}
  [[ -n $PIN_READ ]] || printf 'no %s among the guest attributes\n' "$PIN_ATTRIBUTE" >"$WORK_DIR/pin.err"
  return 0
}

stop_watcher() {
  [[ -n $WATCHER_PID ]] || return 0
  kill "$WATCHER_PID" 2>/dev/null || true
  wait "$WATCHER_PID" 2>/dev/null || true
  WATCHER_PID=""
}

# After the agent has answered: wait (at most PIN_WAIT s) for the pin, then check that the key
# answering at AGENT_URL is that one. Only then may a call carry the token.
verify_agent_key() {
  local t0 deadline
  t0=$(now)
  if ((AGENT_TLS == 0)); then
    log WARNING "step 4/6: AGENT_TLS=0: the token crosses the network to $AGENT_URL in the clear; use it only on a private network you trust"
    return
  fi
  deadline=$(($(date +%s) + PIN_WAIT))
  ((deadline < BOOT_DEADLINE)) || deadline=$BOOT_DEADLINE
  until [[ -s $WORK_DIR/pin ]]; do
    if ! kill -0 "$WATCHER_PID" 2>/dev/null || (($(date +%s) >= deadline)); then
      stop_watcher
      die "$EX_AGENT" "step 4/6: $INSTANCE's agent answers, but the VM never published its TLS key (guest attribute $PIN_ATTRIBUTE): is enable-guest-attributes=TRUE set in its metadata (gcloud compute instances add-metadata $INSTANCE --zone=$ZONE --metadata=enable-guest-attributes=TRUE), and may this job's service account read it (compute.instances.getGuestAttributes)? Last answer: $(pin_error). Nothing was sent with the token."
    fi
    nap 0.05
  done
  stop_watcher
  use_pin "$(<"$WORK_DIR/pin")"
  deadline=$(($(date +%s) + API_TIMEOUT))
  while :; do
    call_agent GET / 5 "${PINNED[@]}"
    if ((CURL_RC == 90)) && reread_pin; then
      call_agent GET / 5 "${PINNED[@]}"
    fi
    ((CURL_RC == 90)) && impostor
    [[ $HTTP_CODE == 200 ]] && break
    if ! is_transient_http || (($(date +%s) >= deadline)); then
      die "$EX_AGENT" "step 4/6: the agent answered, then not over the pinned connection: $(last_agent_error)"
    fi
    nap 0.5
  done
  log INFO "step 4/6: TLS: the agent's key matches the pin $INSTANCE published ($PIN): verified ($(since "$t0")s)"
}

use_pin() {
  PIN=$1
  PINNED=(-k --pinnedpubkey "$PIN")
}

# The pin read may be the previous boot's, and the VM may have made a new key since: read it
# once more (startup.sh publishes before the agent starts); true when it changed.
reread_pin() {
  local old=$PIN
  read_attributes && [[ $PIN_READ =~ ^sha256// && $PIN_READ != "$old" ]] || return 1
  log WARNING "step 4/6: $INSTANCE published a new TLS key pin ($PIN_READ, was $old): using it"
  use_pin "$PIN_READ"
}

pin_error() {
  local err=""
  [[ -f $WORK_DIR/pin.err ]] && err=$(grep -v '^[[:space:]]*$' "$WORK_DIR/pin.err" | tr '\n' ' ' | cut -c1-300)
  printf '%s' "${err:-none}"
}

impostor() {
  die "$EX_AGENT" "something else answers at $AGENT_URL: its TLS key is not the one $INSTANCE published ($PIN), so nothing was sent with the token. Check that the address belongs to $INSTANCE (gcloud compute addresses describe $STATIC_NAME --region=$REGION) and what listens on port $AGENT_PORT there; a VM whose key was made again publishes the new pin at its next boot."
}

# 4. Wait for the agent's health check, every HEALTH_INTERVAL seconds, until BOOT_TIMEOUT.
wait_for_agent() {
  local t0 attempts=0
  t0=$(now)
  while :; do
    attempts=$((attempts + 1))
    health
    if [[ $HTTP_CODE == 200 ]]; then
      log INFO "step 4/6: agent $(json_field version) answers on $AGENT_URL after $attempts tries ($(since "$t0")s; busy=$(busy_flag))"
      verify_agent_key
      stop_watcher
      relay_rest
      return
    fi
    boot_failed
    if (($(date +%s) >= BOOT_DEADLINE)); then
      die "$EX_TIMEOUT" "step 4/6: the agent on $AGENT_URL/ did not answer within BOOT_TIMEOUT=${BOOT_TIMEOUT}s ($attempts tries, every ${HEALTH_INTERVAL}s); last error: $(last_agent_error). The VM's serial console tells why: gcloud compute instances get-serial-port-output $INSTANCE --zone=$ZONE"
    fi
    nap "$HEALTH_INTERVAL"
  done
}

# A boot that startup.sh reported failed (vm-job-agent/boot is `failed: <reason>`) ends the
# wait at once, with the reason and the last lines of the VM's serial console.
boot_failed() {
  local state
  [[ -s $WORK_DIR/boot-state ]] || return 0
  state=$(<"$WORK_DIR/boot-state")
  [[ $state == failed:* ]] || return 0
  stop_watcher
  relay_rest
  die "$EX_TIMEOUT" "step 4/6: $INSTANCE's boot failed: ${state#failed: }. The serial console: gcloud compute instances get-serial-port-output $INSTANCE --zone=$ZONE"
}

busy_flag() { [[ $BODY == *'"busy":true'* ]] && printf true || printf false; }

last_agent_error() {
  if [[ $HTTP_CODE == 000 ]]; then printf '%s' "${CURL_ERROR:-no answer}"; else printf 'HTTP %s %s' "$HTTP_CODE" "${BODY:0:200}"; fi
}

# 5. Start the run. The Idempotency-Key makes a retried Cloud Run task get its earlier run back.
start_run() {
  local t0 key deadline delay=1 status
  t0=$(now)
  key="${CLOUD_RUN_EXECUTION:-manual-$(date +%s)-$$-$RANDOM}/${CLOUD_RUN_TASK_INDEX:-0}"
  deadline=$(($(date +%s) + API_TIMEOUT))
  while :; do
    agent POST /runs 30 -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
      --data "{\"mode\":\"$MODE\"}"
    is_transient_http || break
    (($(date +%s) + delay <= deadline)) ||
      die "$EX_AGENT" "step 5/6: could not start the run: $(last_agent_error)"
    log WARNING "step 5/6: POST /runs: $(last_agent_error); retrying in ${delay}s"
    nap "$delay"
    delay=$((delay * 2 > 8 ? 8 : delay * 2))
  done
  case $HTTP_CODE in
    202 | 200)
      RUN_ID=$(json_field id)
      status=$(json_field status)
      [[ $RUN_ID =~ ^[0-9a-f]{32}$ ]] || die "$EX_AGENT" "step 5/6: the agent's answer has no run id: ${BODY:0:200}"
      [[ $status == running ]] && RUN_ACTIVE=1
      if [[ $HTTP_CODE == 202 ]]; then
        log INFO "step 5/6: run $RUN_ID started (mode=$MODE, key=$key) ($(since "$t0")s)"
      else
        log WARNING "step 5/6: key $key already has run $RUN_ID ($status): following it instead of starting the job again"
      fi
      ;;
    409)
      OWN_VM=0
      OWN_IP=0
      die "$EX_BUSY" "step 5/6: another run is in progress on $INSTANCE (run $(json_field run_id)); leaving the VM and its address alone"
      ;;
    401) die "$EX_AGENT" "step 5/6: the agent rejected AGENT_TOKEN (401): the token in this job and on the VM differ" ;;
    *) die "$EX_AGENT" "step 5/6: unexpected answer to POST /runs: $(last_agent_error)" ;;
  esac
}

# 6. Follow the run: its log from LOG_OFFSET on, each complete line to stdout as it arrives
# (`GET /runs/ID/log?offset=N&wait=S`; a retry or a reconnect goes on from the same offset,
# so no line is lost or printed twice), until the run ends or RUN_TIMEOUT. Its record then
# decides the exit code.
wait_for_run() {
  local t0 deadline remaining wait status code delay=1
  t0=$(now)
  deadline=$(($(date +%s) + RUN_TIMEOUT))
  log INFO "step 6/6: following run $RUN_ID; the job's output follows on stdout, line by line"
  while :; do
    remaining=$((deadline - $(date +%s)))
    if ((remaining <= 0)); then
      log ERROR "step 6/6: run $RUN_ID still running after RUN_TIMEOUT=${RUN_TIMEOUT}s; cancelling it"
      cancel_run
      exit "$EX_TIMEOUT" # the cleanup prints what the job wrote while it stopped
    fi
    wait=$((remaining < 50 ? remaining : 50))
    fetch_log "$wait" $((wait + 15))
    if [[ $HTTP_CODE == 200 ]]; then
      delay=1
      [[ $LOG_STATUS == running || -s $WORK_DIR/body ]] || break
    elif is_transient_http; then
      [[ $HTTP_CODE != 000 ]] || check_vm_still_there
      log WARNING "step 6/6: following run $RUN_ID: $(last_agent_error); retrying in ${delay}s"
      nap "$delay"
      delay=$((delay * 2 > 8 ? 8 : delay * 2))
    else
      die "$EX_AGENT" "step 6/6: following run $RUN_ID: $(last_agent_error)"
    fi
  done
  flush_log
  LOG_DONE=1
  RUN_ACTIVE=0
  final_record
  status=$(json_field status)
  if [[ $status == succeeded ]]; then
    log INFO "step 6/6: run $RUN_ID succeeded ($(since "$t0")s)"
    return
  fi
  # A run that ended badly as its VM went down (a stop, a preemption) is the VM's story: exit 8.
  check_vm_still_there "run $RUN_ID ended $status (exit code $(json_field exit_code))"
  code=$(json_field exit_code)
  die "$EX_FAILED" "step 6/6: run $RUN_ID $status (exit code ${code:-none}): $(json_field error)"
}

# The agent does not answer during the run: is the VM still RUNNING? If not (a Spot VM
# preempted, a stop by hand, a deletion), waiting is pointless: say so, keep the log we have,
# let the cleanup finish what is left, exit 8. A RUNNING VM keeps being retried.
check_vm_still_there() {
  local vm_status err what=${1:-}
  if gcloud_call $(($(date +%s) + API_TIMEOUT)) compute instances describe "$INSTANCE" \
    --zone="$ZONE" --format='value(status)'; then
    vm_status=$GCLOUD_OUT
    [[ $vm_status == RUNNING ]] && return 0
  else
    err=$(last_error)
    [[ $err == *"was not found"* ]] || return 0 # cannot tell: keep retrying
    vm_status="gone (deleted)"
  fi
  RUN_ACTIVE=0 # nothing left to cancel: the VM's processes are gone with it
  LOG_DONE=1   # nor a log to fetch
  flush_log
  die "$EX_VM_GONE" "step 6/6: the VM went away during run $RUN_ID${what:+ ($what)}: $INSTANCE is $vm_status (a Spot VM is preempted this way; a stop by hand or a deletion looks the same). The job's output up to then is above; what the job did after it is unknown: check before running it again."
}

# fetch_log WAIT [MAX_TIME]: the log's bytes from LOG_OFFSET (held up to WAIT s for new ones);
# complete lines go to stdout, a last partial one waits in $WORK_DIR/pending. Sets LOG_STATUS.
fetch_log() {
  local wait=$1 max_time=${2:-$(($1 + 15))} next skipped
  RAW_BODY=1 agent GET "/runs/$RUN_ID/log?offset=$LOG_OFFSET&wait=$wait" "$max_time" \
    -D "$WORK_DIR/headers"
  [[ $HTTP_CODE == 200 ]] || return 0
  next=$(header x-next-offset)
  skipped=$(header x-log-skipped)
  LOG_STATUS=$(header x-run-status)
  if [[ ! $next =~ ^[0-9]+$ ]]; then
    ((IN_CLEANUP)) && return 0
    die "$EX_AGENT" "step 6/6: the agent's log answer has no X-Next-Offset"
  fi
  if [[ ${skipped:-0} != 0 ]]; then
    log WARNING "step 6/6: $skipped bytes of the job's output were no longer kept on the VM (LOG_MAX_BYTES)"
  fi
  CRITICAL=1 # the offset, the pending bytes and stdout move together
  LOG_OFFSET=$next
  cat "$WORK_DIR/body" >>"$WORK_DIR/pending"
  emit_lines
  critical_end
}

# Every complete line of $WORK_DIR/pending to stdout; the rest stays for the next chunk.
emit_lines() {
  local n
  n=$(tr -dc '\n' <"$WORK_DIR/pending" | wc -c)
  ((n > 0)) || return 0
  head -n "$n" "$WORK_DIR/pending"
  tail -n +"$((n + 1))" "$WORK_DIR/pending" >"$WORK_DIR/pending.rest"
  mv -f "$WORK_DIR/pending.rest" "$WORK_DIR/pending"
}

# The job's last line, when it did not end with a newline.
flush_log() {
  [[ -s $WORK_DIR/pending ]] || return 0
  cat "$WORK_DIR/pending"
  printf '\n'
  : >"$WORK_DIR/pending"
}

header() { tr -d '\r' <"$WORK_DIR/headers" | sed -n "s/^$1: *//Ip" | tail -n 1; }

# The run's record once it has ended (transient errors retried within API_TIMEOUT).
final_record() {
  local deadline delay=1
  deadline=$(($(date +%s) + API_TIMEOUT))
  while :; do
    agent GET "/runs/$RUN_ID" 30
    [[ $HTTP_CODE == 200 ]] && return
    [[ $HTTP_CODE != 000 ]] || check_vm_still_there # an interrupted run: the VM stopping?
    if ! is_transient_http || (($(date +%s) + delay > deadline)); then
      die "$EX_AGENT" "step 6/6: reading run $RUN_ID: $(last_agent_error)"
    fi
    nap "$delay"
    delay=$((delay * 2 > 8 ? 8 : delay * 2))
  done
}

cancel_run() {
  agent POST "/runs/$RUN_ID/cancel" 8
  if [[ $HTTP_CODE == 200 ]]; then
    RUN_ACTIVE=0
    log WARNING "run $RUN_ID cancelled ($(json_field status))"
  else
    log ERROR "could not cancel run $RUN_ID: $(last_agent_error)"
  fi
}

# -- cleanup ---------------------------------------------------------------------------------

# Runs once, on any exit. Asks the API to stop the VM first (a Cloud Run task has 10 s between
# SIGTERM and SIGKILL), then cancels a run still going, waits for TERMINATED within
# STOP_TIMEOUT, detaches the address, and last gives back the VM's claim. A failing step does not
# stop the next one.
cleanup() {
  local rc=$? t0 stop_pid stop_rc=0 deadline
  trap - EXIT
  trap '' INT TERM
  set +e
  IN_CLEANUP=1
  [[ -n $CHILD_PID ]] && kill "$CHILD_PID" 2>/dev/null
  stop_watcher
  if [[ ${KEEP_VM:-0} == 1 ]] && ((OWN_VM || OWN_IP)); then
    log WARNING "KEEP_VM=1: leaving $INSTANCE running with $STATIC_IP attached. It costs money until you run: gcloud compute instances stop $INSTANCE --zone=$ZONE && gcloud compute instances delete-access-config $INSTANCE --zone=$ZONE --access-config-name='$ACCESS_CONFIG_NAME'"
    OWN_VM=0 OWN_IP=0
  fi
  if ((OWN_VM == 0 && OWN_IP == 0)); then
    if ! release_claim && ((rc == 0)); then rc=$EX_CLEANUP; fi
    finish "$rc"
  fi
  t0=$(now)
  deadline=$(($(date +%s) + STOP_TIMEOUT))
  if ((OWN_VM)); then
    log INFO "cleanup: stopping $INSTANCE"
    gcloud_call "$deadline" compute instances stop "$INSTANCE" --zone="$ZONE" &
    stop_pid=$!
  fi
  if ((RUN_ACTIVE)) && [[ -n $AGENT_URL ]]; then
    cancel_run
  fi
  if [[ -n $RUN_ID ]] && ((LOG_DONE == 0)); then # what the job printed since the last fetch
    fetch_log 0 3
    flush_log
  fi
  if ((OWN_VM)); then
    wait "$stop_pid" || stop_rc=$?
    if ((stop_rc == 0)); then
      log INFO "cleanup: $INSTANCE is TERMINATED ($(since "$t0")s)"
    else
      log ERROR "cleanup: $INSTANCE may still be running (not TERMINATED within STOP_TIMEOUT=${STOP_TIMEOUT}s): check it with gcloud compute instances describe $INSTANCE --zone=$ZONE"
      ((rc == 0)) && rc=$EX_CLEANUP
    fi
  fi
  if ((OWN_IP)); then
    if gcloud_call $(($(date +%s) + API_TIMEOUT)) compute instances delete-access-config "$INSTANCE" \
      --zone="$ZONE" --network-interface="$NETWORK_INTERFACE" \
      --access-config-name="$ACCESS_CONFIG_NAME"; then
      log INFO "cleanup: detached $STATIC_IP from $INSTANCE ($(since "$t0")s)"
    else
      log ERROR "cleanup: could not detach $STATIC_IP from $INSTANCE: $(last_error)"
      ((rc == 0)) && rc=$EX_CLEANUP
    fi
  fi
  if ! release_claim && ((rc == 0)); then rc=$EX_CLEANUP; fi # last: the VM is free again
  finish "$rc"
}

# on_signal CODE NAME: SIGTERM or SIGINT: exit through the cleanup, at once, unless the log's
# lines are being printed (then at the end of that, so no line is printed twice or lost).
on_signal() {
  if ((CRITICAL)); then
    DEFERRED="$1 $2"
    return
  fi
  log WARNING "$2 received: cleaning up"
  exit "$1"
}

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

# -- status and logs: read-only ---------------------------------------------------------------

usage() {
  cat <<USAGE
usage: entrypoint.sh [run | status | logs [RUN_ID] | --help]
  run      (the default, as Cloud Run and Cloud Scheduler call it) attach the static IP, start
           the VM, run the job through its agent, always stop the VM and detach the IP
  status   the VM's status, the address and where it is attached, which execution holds the
           VM (its claim), the boot's state, and, when the agent answers, its health and its
           last runs
  logs     a run's output (the latest run's without RUN_ID); the VM must be running
status and logs only read: they never start, stop, attach or detach anything. The settings are
the same as a run's (README.md, "The orchestrator").
USAGE
}

# describe_vm: VM_STATUS, VM_INTERNAL and VM_NAT of the instance's interface.
describe_vm() {
  local n=${NETWORK_INTERFACE#nic}
  gcloud_call $(($(date +%s) + API_TIMEOUT)) compute instances describe "$INSTANCE" \
    --zone="$ZONE" --format="value[separator=' '](status,networkInterfaces[$n].networkIP,networkInterfaces[$n].accessConfigs[0].natIP)" ||
    die "$EX_CLOUD" "describing $INSTANCE: $(last_error)"
  read -r VM_STATUS VM_INTERNAL VM_NAT <<<"$GCLOUD_OUT"
}

# status: what the VM, its address, its boot and its agent are doing now; changes nothing.
status() {
  describe_vm
  printf 'instance  %s in %s: %s (internal address %s, external %s)\n' "$INSTANCE" "$ZONE" \
    "$VM_STATUS" "${VM_INTERNAL:-none}" "${VM_NAT:-none}"
  need_token
  read_address $(($(date +%s) + API_TIMEOUT))
  if [[ -n $ADDRESS_USERS ]]; then
    printf 'address   %s %s: attached to %s\n' "$STATIC_NAME" "$STATIC_IP" "${ADDRESS_USERS##*/}"
  else
    printf 'address   %s %s: not attached\n' "$STATIC_NAME" "$STATIC_IP"
  fi
  if read_labels; then
    printf 'claim     %s\n' "${HOLDER:+held: $CLAIM_LABEL=$HOLDER, $(claim_lapse "$HOLDER")}${HOLDER:-none: the VM is free for an execution}"
  else
    printf 'claim     could not read it: %s\n' "$API_ERROR"
  fi
  read_attributes || true
  printf 'boot      %s\n' "${BOOT_READ:-(no state published)}"
  if [[ $VM_STATUS != RUNNING ]]; then
    printf 'agent     not running: the VM is %s\n' "$VM_STATUS"
    return 0
  fi
  if [[ $AGENT_ADDRESS == internal ]]; then agent_url_of "$VM_INTERNAL"; else agent_url_of "$STATIC_IP"; fi
  status_agent
}

status_agent() {
  local line
  health
  if [[ $HTTP_CODE != 200 ]]; then
    printf 'agent     %s: no answer (%s)\n' "$AGENT_URL" "$(last_agent_error)"
    return 0
  fi
  printf 'agent     %s: %s, version %s, busy=%s\n' "$AGENT_URL" "$(json_field status)" \
    "$(json_field version)" "$(busy_flag)"
  if ((AGENT_TLS)); then
    if [[ -z $PIN_READ ]]; then
      printf 'runs      not asked: the VM published no TLS key pin, so the token goes nowhere\n'
      return 0
    fi
    use_pin "$PIN_READ"
  fi
  agent GET "/runs?limit=5" 10
  if [[ $HTTP_CODE != 200 ]]; then
    printf 'runs      could not list them: %s\n' "$(last_agent_error)"
    return 0
  fi
  printf 'runs      (newest first)\n'
  while IFS= read -r line; do
    BODY=$line
    printf '  %s  %-11s exit %-4s %s -> %s  %s\n' "$(json_field id)" "$(json_field status)" \
      "$(json_field exit_code)" "$(json_field started_at)" "$(json_field finished_at)" \
      "$(json_field error)"
  done < <(printf '%s\n' "${BODY//\},\{/$'}\n{'}" | grep '"id":')
}

# logs [RUN_ID]: a run's output, from the agent on the running VM; changes nothing.
show_logs() {
  local run_id=${1:-}
  describe_vm
  [[ $VM_STATUS == RUNNING ]] ||
    die "$EX_AGENT" "$INSTANCE is $VM_STATUS: the runs' logs are on its disk, reachable while it runs (./entrypoint.sh with KEEP_VM=1, then logs)"
  need_token
  if [[ $AGENT_ADDRESS == internal ]]; then
    agent_url_of "$VM_INTERNAL"
  else
    read_address $(($(date +%s) + API_TIMEOUT))
    agent_url_of "$STATIC_IP"
  fi
  if ((AGENT_TLS)); then
    read_attributes || true
    [[ -n $PIN_READ ]] || die "$EX_AGENT" "$INSTANCE published no TLS key pin: is enable-guest-attributes=TRUE set?"
    use_pin "$PIN_READ"
  fi
  if [[ -z $run_id ]]; then
    agent GET "/runs?limit=1" 10
    [[ $HTTP_CODE == 200 ]] || die "$EX_AGENT" "listing runs: $(last_agent_error)"
    run_id=$(json_field id)
    [[ -n $run_id ]] || die "$EX_AGENT" "$INSTANCE has no runs yet"
  fi
  [[ $run_id =~ ^[0-9a-f]{32}$ ]] || die "$EX_CONFIG" "a run id is 32 hex characters, not '$run_id'"
  log INFO "the output of run $run_id follows on stdout"
  RUN_ID=$run_id
  while :; do
    fetch_log 0 30
    [[ $HTTP_CODE == 200 ]] || die "$EX_AGENT" "reading run $run_id's log: $(last_agent_error)"
    [[ -s $WORK_DIR/body ]] || break
  done
  flush_log
  LOG_DONE=1
}

main() {
  case ${1:-run} in
    run | status | logs) ;;
    -h | --help | help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "$EX_CONFIG" "unknown command '$1' (run, status, logs)"
      ;;
  esac
  START=$(now)
  trap cleanup EXIT
  trap 'on_signal 143 SIGTERM' TERM
  trap 'on_signal 130 SIGINT' INT
  if [[ ${1:-run} != run ]]; then # read-only: the cleanup finds nothing of ours to undo
    check_config
    if [[ $1 == status ]]; then status; else show_logs "${2:-}"; fi
    exit 0
  fi
  check_config                      # 1. configuration, before any cloud call
  log INFO "step 1/6: $MODE on $INSTANCE in $ZONE (project $PROJECT_ID), address $STATIC_NAME, agent port $AGENT_PORT"
  attach_static_ip                  # 2. the VM claimed, the static IP on it
  start_vm                          # 3. VM started
  wait_for_agent                    # 4. agent answers
  start_run                         # 5. run started (or found again)
  wait_for_run                      # 6. run ended; its log printed
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
