# shellcheck shell=bash
# deploy/lib.sh: how deploy.sh speaks and calls gcloud: log lines (stderr), the plan's lines
# (stdout), every gcloud call counted and its failure explained (which resource, which
# permission, policy or API, and the command that fixes it).
#
# Sets: GCLOUD_CALLS (gcloud calls so far), CHANGES (changes made or planned), OUT and ERR (the
#   last call's stdout and stderr), CHANGED (the resources changed, in order).
# Reads: ACTION (plan, apply, status, rotate-token, destroy), PROJECT_ID.

GCLOUD_CALLS=0
CHANGES=0
# what gcloud says when a resource is not there, in the words of each API
NOT_FOUND='NOT_FOUND|[Nn]ot[[:space:]]found|could[[:space:]]not[[:space:]]be[[:space:]]found|does[[:space:]]not[[:space:]]exist|[Cc]annot[[:space:]]find'
readonly NOT_FOUND
CHANGED=()
OUT=""
ERR=""

log() { printf '%(%Y-%m-%dT%H:%M:%S)T %-7s %s\n' -1 "$1" "${*:2}" >&2; }
die() {
  log ERROR "$*"
  exit 1
}
now() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }
since() {
  local d=$(($(now) - $1))
  printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10))
}

# gc ARGS...: gcloud ARGS, quiet (no prompt: deploy.sh may run with no terminal), its stdout in
# OUT and stderr in ERR; returns gcloud's status. A secret's value goes on its stdin
# (`gc … --data-file=- <FILE`): never in an argument, never in a log.
gc() {
  local errfile rc=0
  GCLOUD_CALLS=$((GCLOUD_CALLS + 1))
  errfile=$(mktemp)
  OUT=$(gcloud --quiet --project="$PROJECT_ID" "$@" 2>"$errfile") || rc=$?
  ERR=$(<"$errfile")
  rm -f "$errfile"
  return "$rc"
}

# read_resource WHAT ARGS...: gc ARGS (a describe); 0 with OUT when it exists, 1 when it does
# not; any other failure ends deploy.sh saying why.
read_resource() {
  local what=$1
  shift
  gc "$@" && return 0
  # a plan in a project whose APIs are not enabled yet: what they hold does not exist yet
  if [[ $ACTION != apply && ${API_MISSING:-0} == 1 && $ERR =~ (SERVICE_DISABLED|has[[:space:]]not[[:space:]]been[[:space:]]used|is[[:space:]]disabled) ]]; then
    return 1
  fi
  if [[ $ERR =~ $NOT_FOUND ]]; then
    return 1
  fi
  fail "$what" "reading it"
}

# fail WHAT DOING: the last call failed: end deploy.sh, naming the resource, gcloud's words and
# what to do about them.
fail() {
  local what=$1 doing=$2 words hint=""
  # gcloud's ERROR: line (its first), else its last lines
  words=$(grep -m 1 'ERROR:' <<<"$ERR" || grep -v '^[[:space:]]*$' <<<"$ERR" | tail -n 3 | tr '\n' ' ' || true)
  if [[ $ERR =~ (SERVICE_DISABLED|has[[:space:]]not[[:space:]]been[[:space:]]used|is[[:space:]]disabled|API[[:space:]]not[[:space:]]enabled) ]]; then
    hint="an API is not enabled: ./deploy.sh apply enables them first (or: gcloud services enable ${APIS[*]} --project=$PROJECT_ID)"
  elif [[ $ERR =~ (constraints/[A-Za-z.]+) ]]; then
    hint="an organisation policy (${BASH_REMATCH[1]}) forbids it: ask your organisation's administrator for an exception for project $PROJECT_ID (gcloud resource-manager org-policies describe ${BASH_REMATCH[1]} --project=$PROJECT_ID shows it)"
  elif [[ $ERR =~ [Bb]illing ]]; then
    hint="the project needs a billing account: gcloud billing projects link $PROJECT_ID --billing-account=ACCOUNT_ID"
  elif [[ $ERR =~ (PERMISSION_DENIED|[Pp]ermission|does[[:space:]]not[[:space:]]have|actAs) ]]; then
    local perm account
    account=$(gcloud config get-value account 2>/dev/null || true)
    perm=$(grep -oE "(Required '|Permission '|permission )[a-zA-Z]+\.[a-zA-Z]+\.[a-zA-Z]+" <<<"$ERR" |
      grep -oE '[a-zA-Z]+\.[a-zA-Z]+\.[a-zA-Z]+$' | head -n 1 || true)
    hint="your account (${account:-the one gcloud uses}) may not do this${perm:+: it needs $perm}; deploy as the project's owner, or get a role holding it (gcloud projects add-iam-policy-binding $PROJECT_ID --member=user:YOU --role=roles/owner, by someone who may)"
  fi
  log ERROR "$what: $doing failed: ${words:-gcloud said nothing}"
  [[ -z $hint ]] || log ERROR "$what: $hint"
  if [[ $ACTION == apply ]]; then
    log ERROR "nothing after $what was changed; run ./deploy.sh apply again once it is fixed (it finishes what is missing)"
  else
    log ERROR "./deploy.sh $ACTION stopped at $what"
  fi
  exit 1
}

# Plan and apply share each ensure_ function: it reads the resource, then calls one of these.
# unchanged WHAT [NOTE]: it is as deploy.env wants.
unchanged() {
  if [[ $ACTION != apply ]]; then
    printf '  %-8s %s%s\n' exists "$1" "${2:+ ($2)}"
  else
    log INFO "$1: unchanged${2:+ ($2)}"
  fi
}

# change WHAT CREATE|UPDATE [DETAIL]: it must be made or changed. In a plan: say so and return 1
# (the caller does nothing); in apply: log what is done and return 0.
change() {
  CHANGES=$((CHANGES + 1))
  CHANGED+=("$1")
  if [[ $ACTION != apply ]]; then
    printf '  %-8s %s%s\n' "$2" "$1" "${3:+: $3}"
    return 1
  fi
  T0=$(now)
  log INFO "$1: $(ing "$2")${3:+: $3}"
}

# ing VERB: create -> creating, stop -> stopping.
ing() {
  case $1 in
    *e) printf '%sing' "${1%e}" ;;
    stop) printf 'stopping' ;;
    *) printf '%sing' "$1" ;;
  esac
}

# done_ WHAT: the change just made, and its time.
done_() { log INFO "$1: done ($(since "$T0") s)"; }

# differences HAVE WANT: the keys whose values differ between two sets of key=value lines (WANT's
# keys only: what the settings care about), comma-separated.
differences() {
  local -A have=()
  local line key out=()
  while IFS= read -r line; do [[ -z $line ]] || have[${line%%=*}]=${line#*=}; done <<<"$1"
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    key=${line%%=*}
    [[ ${have[$key]-<none>} == "${line#*=}" ]] || out+=("$key")
  done <<<"$2"
  local IFS=,
  printf '%s' "${out[*]}"
}

# value_of KEY LINES: KEY's value in key=value LINES.
value_of() { printf '%s\n' "$2" | sed -n "s/^$1=//p" | head -n 1; }

canonical() { python3 "$DEPLOY_DIR/deploy/canonical.py" "$@"; }
