# shellcheck shell=bash
# orchestrator/logging.sh: how the orchestrator speaks: its exit codes, its log lines (stderr;
# one-line JSON for Cloud Logging on Cloud Run), and its clock.
#
# Sets (read by all): EX_* (the exit codes, docs/orchestrator.md's table), START (when this process began,
#   in microseconds).
# Reads: CLOUD_RUN_JOB (JSON lines when set), INSTANCE (named in every JSON line).
# Needs: json.sh (json_escape).

readonly EX_FAILED=1 EX_CONFIG=2 EX_BUSY=3 EX_TIMEOUT=4 EX_CLOUD=5 EX_AGENT=6 EX_CLEANUP=7
readonly EX_VM_GONE=8 EX_NO_CAPACITY=9 EX_TOO_LATE=10 EX_NOTHING_THERE=11

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

# stamp_in ZONE FORMAT EPOCH: EPOCH as strftime's FORMAT in the time zone ZONE (UTC0: UTC).
stamp_in() { TZ=$1 printf "%($2)T" "$3"; }

# plural N ONE MANY: the word for N of them ("1 try", "2 tries").
plural() { if (($1 == 1)); then printf '%s' "$2"; else printf '%s' "$3"; fi; }

START=$(now)
