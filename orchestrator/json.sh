# shellcheck shell=bash
# orchestrator/json.sh: the little JSON the orchestrator reads and writes, in bash alone (the
# image has no jq): a string escaped for a JSON value, a field read from an object.
#
# Sets nothing. Reads BODY (agent.sh: the agent's last answer), json_field's default text.

json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '%s' "$s"
}

# json_field NAME [JSON]: a string or number field of a JSON object (JSON, or the agent's last
# answer BODY), "" when absent or null.
json_field() {
  local re_str="\"$1\":\"(([^\"\\\\]|\\\\.)*)\"" re_num="\"$1\":(-?[0-9]+)"
  local text=${2-${BODY:-}}
  if [[ $text =~ $re_str ]]; then
    local v=${BASH_REMATCH[1]}
    v=${v//\\\"/\"}
    v=${v//\\n/ }
    printf '%s' "${v//\\\\/\\}"
  elif [[ $text =~ $re_num ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
  fi
}
