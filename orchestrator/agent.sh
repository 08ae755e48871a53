# shellcheck shell=bash
# orchestrator/agent.sh: talking to the agent on the VM: its health, the TLS key it answers
# with (checked against the pin the VM published before any call carries the token), and every
# call that carries the token.
#
# With AGENT_TLS=1 a call that carries the token goes only over TLS to the pinned key: curl
# checks the pin before it sends a byte of the request. Another key at the address ends the
# execution (exit 6), except during the cleanup, which goes on.
#
# Sets (results of the last call): HTTP_CODE (000: no answer), BODY, CURL_ERROR, CURL_RC;
#   AGENT_URL (agent_url_of).
# Private: PIN (the key the VM published), PINNED (curl's arguments that hold a call to it).
# Reads: the settings, BOOT_DEADLINE (vm.sh). Needs: logging.sh, json.sh, children.sh,
#   watcher.sh, cleanup.sh (in_cleanup).

AGENT_URL=""
PIN=""
PINNED=()

# agent_url_of ADDRESS: the agent's URL on that address.
agent_url_of() {
  if ((AGENT_TLS)); then AGENT_URL="https://$1:$AGENT_PORT"; else AGENT_URL="http://$1:$AGENT_PORT"; fi
}

# agent [--raw] METHOD PATH MAX_TIME [CURL ARGS...]: a call that carries the token; with
# AGENT_TLS=1 only over TLS to the pinned key (curl checks the pin before it sends a byte of the
# request). Sets HTTP_CODE, BODY, CURL_ERROR as call_agent does. Another key at the address ends
# the execution (exit 6), except during cleanup, which goes on.
agent() {
  local raw=()
  [[ $1 != --raw ]] || { raw=(--raw) && shift; }
  local method=$1 path=$2 max_time=$3
  shift 3
  if ((AGENT_TLS)) && [[ -z $PIN ]]; then
    HTTP_CODE=000 BODY="" CURL_ERROR="the agent's key is not verified yet: nothing sent" CURL_RC=1
    return
  fi
  call_agent "${raw[@]}" "$method" "$path" "$max_time" -H @"$WORK_DIR/auth" "${PINNED[@]}" "$@"
  if ((CURL_RC == 90)) && ! in_cleanup; then
    impostor
  fi
}

# call_agent [--raw] METHOD PATH MAX_TIME [CURL ARGS...]: sets HTTP_CODE and BODY; HTTP_CODE 000
# when the agent could not be reached, with curl's reason in CURL_ERROR and its exit code in
# CURL_RC. MAX_TIME is cut to what is left of a signal's cleanup budget (none left: no call). --raw: a 200's body stays in its file only (answer_bytes), as a log chunk must. (An
# option, not a variable set for the call: a signal's cleanup runs inside the interrupted call,
# where such a variable would still hold for the cleanup's own calls.)
call_agent() {
  local raw_body=0
  [[ $1 != --raw ]] || { raw_body=1 && shift; }
  local method=$1 path=$2 max_time=$3
  shift 3
  HTTP_CODE=000
  BODY=""
  CURL_ERROR=""
  CURL_RC=0
  rm -f "$WORK_DIR/body"
  max_time=$(max_time "$max_time") # within the budget a signal's cleanup has
  if [[ $max_time == 0 ]]; then
    CURL_ERROR="no time left for the call (the cleanup after a signal has 10 s)" CURL_RC=28
    return 0
  fi
  in_background "$WORK_DIR/code" "$WORK_DIR/curl.err" \
    curl -sS -X "$method" --connect-timeout 3 --max-time "$max_time" \
    -o "$WORK_DIR/body" -w '%{http_code}' "$@" "$AGENT_URL$path" || CURL_RC=$?
  HTTP_CODE=$(<"$WORK_DIR/code")
  [[ $HTTP_CODE =~ ^[0-9]{3}$ ]] || HTTP_CODE=000
  [[ -f $WORK_DIR/body ]] || : >"$WORK_DIR/body"
  if ((raw_body == 0)) || [[ $HTTP_CODE != 200 ]]; then
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

# answer_bytes: the last answer's body as it came (after --raw, the only copy of it).
answer_bytes() { cat "$WORK_DIR/body"; }

is_transient_http() { [[ $HTTP_CODE == 000 || $HTTP_CODE == 429 || $HTTP_CODE == 5?? ]]; }

busy_flag() { [[ $BODY == *'"busy":true'* ]] && printf true || printf false; }

last_agent_error() {
  if [[ $HTTP_CODE == 000 ]]; then printf '%s' "${CURL_ERROR:-no answer}"; else printf 'HTTP %s %s' "$HTTP_CODE" "${BODY:0:200}"; fi
}

# 4. Wait for the agent's health check, every HEALTH_INTERVAL seconds, until BOOT_TIMEOUT.
wait_for_agent() {
  local t0 attempts=0
  t0=$(now)
  while :; do
    attempts=$((attempts + 1))
    health
    if [[ $HTTP_CODE == 200 ]]; then
      log INFO "step 4/6: agent $(json_field version) answers on $AGENT_URL after $attempts $(plural "$attempts" try tries) ($(since "$t0")s; busy=$(busy_flag))"
      verify_agent_key
      stop_watcher
      relay_rest
      return
    fi
    boot_failed
    if (($(epoch) >= BOOT_DEADLINE)); then
      die "$EX_TIMEOUT" "step 4/6: the agent on $AGENT_URL/ did not answer within BOOT_TIMEOUT=${BOOT_TIMEOUT}s ($attempts $(plural "$attempts" try tries), every ${HEALTH_INTERVAL}s); last error: $(last_agent_error). The VM's serial console tells why: gcloud compute instances get-serial-port-output $INSTANCE --zone=$ZONE"
    fi
    nap "$HEALTH_INTERVAL"
  done
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
  deadline=$(($(epoch) + PIN_WAIT))
  ((deadline < BOOT_DEADLINE)) || deadline=$BOOT_DEADLINE
  stop_watcher # from here this process reads the pin itself, if the watcher has none yet
  read_pin_now
  until published_pin; do
    if (($(epoch) >= deadline)); then
      die "$EX_AGENT" "step 4/6: $INSTANCE's agent answers, but the VM never published its TLS key (guest attribute $PIN_ATTRIBUTE): is enable-guest-attributes=TRUE set in its metadata (gcloud compute instances add-metadata $INSTANCE --zone=$ZONE --metadata=enable-guest-attributes=TRUE), and may this job's service account read it (compute.instances.getGuestAttributes)? Last answer: $(pin_error). Nothing was sent with the token."
    fi
    nap 1
    read_pin_now
  done
  use_pin "$PUBLISHED_PIN"
  deadline=$(($(epoch) + API_TIMEOUT))
  while :; do
    call_agent GET / 5 "${PINNED[@]}"
    if ((CURL_RC == 90)) && reread_pin; then
      call_agent GET / 5 "${PINNED[@]}"
    fi
    ((CURL_RC == 90)) && impostor
    [[ $HTTP_CODE == 200 ]] && break
    if ! is_transient_http || (($(epoch) >= deadline)); then
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

impostor() {
  die "$EX_AGENT" "something else answers at $AGENT_URL: its TLS key is not the one $INSTANCE published ($PIN), so nothing was sent with the token. Check that the address belongs to $INSTANCE (gcloud compute addresses describe $STATIC_NAME --region=$REGION) and what listens on port $AGENT_PORT there; a VM whose key was made again publishes the new pin at its next boot."
}
