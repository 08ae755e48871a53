# shellcheck shell=bash
# orchestrator/token.sh: the agent's token after a rotation. Cloud Run resolves the job's
# AGENT_TOKEN (--set-secrets=AGENT_TOKEN=agent-token:latest) when the execution starts; a VM that
# boots after a new version was added reads the new one (startup.sh's token-secret). On the
# agent's 401, with AGENT_TOKEN_SECRET set, the secret's latest version is read over Secret
# Manager's REST API (with the job's own access token, as compute_api's calls) and, when it is not
# the token this execution holds, the call is made again with it. The token is never logged.
#
# Sets: nothing but the private header file WORK_DIR/auth (settings.sh's check_token writes it
#   first). Private: TOKEN_RENEWED (1 once the token was renewed: at most once an execution).
# Reads: the settings (AGENT_TOKEN_SECRET, SECRETMANAGER_API, PROJECT_ID), WORK_DIR/api-auth
#   (compute.sh's need_token). Needs: logging.sh, json.sh, children.sh, compute.sh.

TOKEN_RENEWED=0

# renew_agent_token: true when WORK_DIR/auth now holds the secret's latest token, which differs
# from the one it held; false (with the reason logged as a WARNING) otherwise.
renew_agent_token() {
  local f=$WORK_DIR/token-secret code body data token xtrace=0 max
  [[ -n $AGENT_TOKEN_SECRET ]] && ((!TOKEN_RENEWED)) || return 1
  TOKEN_RENEWED=1
  need_token
  max=$(max_time 30)
  [[ $max != 0 ]] || return 1
  in_background "$f.code" "$f.err" curl -sS --connect-timeout 5 --max-time "$max" -o "$f.json" \
    -w '%{http_code}' -H @"$WORK_DIR/api-auth" \
    "${SECRETMANAGER_API%/}/v1/projects/$PROJECT_ID/secrets/$AGENT_TOKEN_SECRET/versions/latest:access" || true
  code=$(<"$f.code")
  # Google's answers are indented JSON ("data": "…"): one line, with no space after a key's colon
  body=$(tr '\n' ' ' <"$f.json" 2>/dev/null | sed -E 's/"[[:space:]]*:[[:space:]]*/":/g' || true)
  rm -f "$f.json"
  if [[ $code == 000 ]]; then
    log WARNING "step 5/6: could not read secret $AGENT_TOKEN_SECRET for a rotated token: no answer: $(tr '\n' ' ' <"$f.err" | cut -c1-200)"
    return 1
  elif [[ $code != 200 ]]; then
    log WARNING "step 5/6: could not read secret $AGENT_TOKEN_SECRET for a rotated token: HTTP $code: $(json_field message "$body" | cut -c1-300) (the job's account needs roles/secretmanager.secretAccessor on it)"
    return 1
  fi
  data=$(json_field data "$body")
  [[ $- == *x* ]] && xtrace=1
  { set +x; } 2>/dev/null
  token=$(base64 -d <<<"$data" 2>/dev/null || true)
  token=${token%$'\n'}
  if [[ ${#token} -lt 16 || $token =~ [[:space:][:cntrl:]] ]]; then
    ((xtrace)) && set -x
    log WARNING "step 5/6: secret $AGENT_TOKEN_SECRET's latest version does not hold a token (16 or more characters, no spaces)"
    return 1
  fi
  if [[ "Authorization: Bearer $token" == "$(<"$WORK_DIR/auth")" ]]; then
    ((xtrace)) && set -x
    log WARNING "step 5/6: secret $AGENT_TOKEN_SECRET's latest version is the token this execution holds: the VM's is another"
    return 1
  fi
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$WORK_DIR/auth")
  ((xtrace)) && set -x
  log WARNING "step 5/6: the agent rejected the token this execution started with; secret $AGENT_TOKEN_SECRET has a newer one (a rotation since the execution started): trying with it"
  return 0
}
