# shellcheck shell=bash
# orchestrator/compute.sh: the calls to Google Cloud: gcloud (bounded by a deadline, transient
# errors retried with backoff) and the Compute REST API with curl and one access token (a few ms
# a call, where a gcloud start-up costs half a second), with their errors in words.
#
# Sets (results of the last call): GCLOUD_OUT (gcloud's stdout; its stderr: last_error,
#   gcloud_said); API_CODE, API_BODY, API_CURL_ERROR (compute_api), API_ERROR (api_outcome).
# Reads: the settings (PROJECT_ID, COMPUTE_API, WORK_DIR).
# Needs: logging.sh, children.sh, json.sh.

# gcloud exits 1 for every error; these are the ones worth another try (HTTP 429 and 5xx,
# connection trouble, a VM still on its way to TERMINATED).
# A start refused for capacity says "try again later" too: start_vm waits for capacity itself.
readonly NO_TIME_LEFT="no time left for the call (the cleanup after a signal has 10 s)"
readonly NO_CAPACITY_RE='ZONE_RESOURCE_POOL_EXHAUSTED(_WITH_DETAILS)?'
readonly TRANSIENT_RE='HTTPError (429|5[0-9][0-9])|[Rr]ate [Ll]imit|[Qq]uota exceeded|[Ii]nternal error|[Bb]ackend ?[Ee]rror|[Uu]navailable|[Tt]ry again|[Cc]onnection (refused|reset|aborted)|ConnectionError|[Tt]imed? ?out|[Tt]emporary failure|is not ready|resourceNotReady'

# gcloud_call DEADLINE_EPOCH ARGS...: run gcloud, bounded by the deadline, retrying transient
# failures with backoff until then. Its stdout is left in GCLOUD_OUT, its stderr in
# $WORK_DIR/gcloud.err (no command substitution: a TERM reaches the trap at once).
gcloud_call() {
  local deadline=$1 delay=1 rc budget
  shift
  GCLOUD_OUT=""
  while :; do
    rc=0
    budget=$((deadline - $(epoch)))
    ((budget > 0)) || budget=1
    in_background "$WORK_DIR/gcloud.out" "$WORK_DIR/gcloud.err" \
      timeout -k 5 "$budget" gcloud "$@" --project="$PROJECT_ID" --quiet || rc=$?
    GCLOUD_OUT=$(<"$WORK_DIR/gcloud.out")
    ((rc == 0)) && return 0
    if ((rc == 124 || rc == 137)); then
      printf 'gcloud timed out after %ss\n' "$budget" >>"$WORK_DIR/gcloud.err"
      return "$rc"
    fi
    gcloud_said "$TRANSIENT_RE" && ! gcloud_said "$NO_CAPACITY_RE" || return "$rc"
    if (($(epoch) + delay > deadline)); then
      log ERROR "gcloud $1 $2: still failing at the deadline: $(last_error)"
      return "$rc"
    fi
    log WARNING "gcloud $1 $2 $3: transient error, retrying in ${delay}s: $(last_error)"
    nap "$delay"
    delay=$((delay * 2 > 16 ? 16 : delay * 2))
  done
}

# last_error: the last gcloud call's stderr, on one line.
last_error() { grep -v '^[[:space:]]*$' "$WORK_DIR/gcloud.err" | tr '\n' ' ' | cut -c1-400; }

# gcloud_said REGEX: true when the last gcloud call's stderr matches REGEX (grep -E).
gcloud_said() { grep -Eq -- "$1" "$WORK_DIR/gcloud.err"; }

# gcloud_stderr: the last gcloud call's stderr as it wrote it (start_vm reads the internal IP
# that `gcloud compute instances start` names there).
gcloud_stderr() { cat "$WORK_DIR/gcloud.err"; }

# compute_api METHOD PATH [CURL ARGS...]: one Compute API call (PATH is under
# projects/PROJECT_ID/) with curl and the access token, as gcloud would make it: a few ms, where
# a gcloud call costs half a second of start-up. Sets API_CODE, API_BODY (on one line) and
# API_CURL_ERROR. Each call is given 30 s (API_MAX=seconds for another bound, such as an
# operation's wait, which Google holds up to two minutes), within the cleanup's budget
# (children.sh's max_time): with none left, no call, and API_CODE 000. An expired token (401) is
# renewed once. Its files are this process's own: the guest-attribute watcher calls it too.
compute_api() {
  local method=$1 path=$2 try max f=$WORK_DIR/api.$BASHPID
  shift 2
  # A POST with no body still says so: Google's front end answers 411 to one without
  # Content-Length (curl sends none when it is given no data).
  [[ $method != POST || " $* " == *" --data "* ]] || set -- -H 'Content-Length: 0' "$@"
  for try in 1 2; do
    rm -f "$f.json"
    max=$(max_time "${API_MAX:-30}") # within the budget a signal's cleanup has
    if [[ $max == 0 ]]; then
      API_CODE=000 API_BODY="" API_CURL_ERROR=$NO_TIME_LEFT
      return 0
    fi
    in_background "$f.code" "$f.err" \
      curl -sS -X "$method" --connect-timeout 5 --max-time "$max" -o "$f.json" \
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

# follow_operation DEADLINE: the answer in API_BODY is an operation: follow it (POST …/wait)
# until DONE or DEADLINE; API_BODY is then the operation as it ended. Google holds a wait up to
# about two minutes before it answers with the operation not yet DONE: each wait is given that
# long (within DEADLINE), and a wait with no answer, a 429 or a 5xx is asked again a second
# later. Returns 3 (API_ERROR says so) when it was not done by DEADLINE; else api_outcome of the
# last answer.
follow_operation() {
  local deadline=$1 name_re='"name":[[:space:]]*"([^"]+)"' done_re='"status":[[:space:]]*"DONE"'
  local name left rc
  API_ERROR=""
  [[ $API_CODE == 200 && $API_BODY =~ $name_re ]] || {
    api_outcome
    return
  }
  name=${BASH_REMATCH[1]}
  until [[ $API_CODE == 200 && $API_BODY =~ $done_re ]]; do
    if [[ $API_CODE != 200 ]]; then
      rc=0
      api_outcome || rc=$?
      ((rc == 3)) || return "$rc"
      nap 1
    fi
    left=$((deadline - $(epoch)))
    ((left > 0)) || {
      API_ERROR="the operation $name was not done in time${API_ERROR:+ (last: $API_ERROR)}"
      return 3
    }
    API_MAX=$((left < 130 ? left : 130)) compute_api POST "zones/$ZONE/operations/$name/wait"
  done
  api_outcome
}

# operation_error: the error message of the operation in API_BODY, if it ended with one.
operation_error() {
  [[ $API_BODY =~ \"error\":[[:space:]]*\{ ]] || return 1
  api_message
}

# urlencode TEXT: TEXT for a URL's query (the access config's name "External NAT").
urlencode() {
  local s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    if [[ $c == [A-Za-z0-9._~-] ]]; then out+=$c; else printf -v c '%%%02X' "'$c" && out+=$c; fi
  done
  printf '%s' "$out"
}

# api_outcome: 0 for HTTP 200; else API_ERROR says what, and 2 for a stale fingerprint (412),
# 3 for what is worth another try (no answer, 429, 5xx), 1 for the rest (a call the budget had no
# time left for among them: the retry loops end with it).
api_outcome() {
  [[ $API_CODE == 200 ]] && return 0
  if [[ $API_CODE == 000 ]]; then
    API_ERROR="no answer from the Compute API: ${API_CURL_ERROR:0:300}"
    [[ $API_CURL_ERROR != "$NO_TIME_LEFT" ]] || return 1
    return 3
  fi
  API_ERROR="HTTP $API_CODE: $(api_message)"
  case $API_CODE in
    412) return 2 ;;
    429 | 5??) return 3 ;;
    *) return 1 ;;
  esac
}

# api_message: the error message of the last Compute API answer (or the answer itself).
api_message() {
  local msg
  msg=$(json_field message "$API_BODY")
  printf '%s' "${msg:-${API_BODY:0:300}}"
}

# The access token for the Compute API calls made with curl (the claim, the address, the guest
# attributes), from gcloud once (a child we wait for, so a TERM reaches the trap at once).
need_token() {
  [[ -s $WORK_DIR/api-auth ]] || in_background /dev/null /dev/null api_token ||
    die "$EX_CLOUD" "gcloud auth print-access-token failed: $(grep -v '^[[:space:]]*$' "$WORK_DIR/token.err" | tr '\n' ' ' | cut -c1-300)"
}

# api_token: an access token for the Compute API from gcloud (on Cloud Run, the job's service
# account), written to a private header file; it is never printed.
api_token() {
  local tmp=$WORK_DIR/api-auth.tmp
  if (umask 077 && { printf 'Authorization: Bearer ' && timeout -k 2 30 gcloud auth \
    print-access-token --quiet; } >"$tmp" 2>"$WORK_DIR/token.err"); then
    mv -f "$tmp" "$WORK_DIR/api-auth"
    return 0
  fi
  rm -f "$tmp"
  return 1
}
