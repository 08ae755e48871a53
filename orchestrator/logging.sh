# shellcheck shell=bash
# orchestrator/logging.sh: how the orchestrator speaks: its exit codes, its log lines (stderr;
# one-line JSON for Cloud Logging on Cloud Run), its clock, each step's duration and the
# execution's closing summary line.
#
# Sets (read by all): EX_* (the exit codes, docs/orchestrator.md's table), START (when this process began,
#   in microseconds).
# Private: STEP (the step under way), STEP_AT (when it began), STEP_TIMES (the steps done, as
#   "name seconds" lines).
# Reads: CLOUD_RUN_JOB (JSON lines when set), INSTANCE (named in every JSON line); for the
#   summary: RUN_SLOT, SLOT_LABEL, RUN_KEY (slot.sh), RUN_ID (run.sh), VM_UP_AT, VM_DOWN_AT (vm.sh).
# Needs: json.sh (json_escape).

readonly EX_FAILED=1 EX_CONFIG=2 EX_BUSY=3 EX_TIMEOUT=4 EX_CLOUD=5 EX_AGENT=6 EX_CLEANUP=7
readonly EX_VM_GONE=8 EX_NO_CAPACITY=9 EX_TOO_LATE=10 EX_NOTHING_THERE=11 EX_MISSED=12
STEP="" STEP_AT=0 STEP_TIMES=""

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

# epoch: the time, seconds since the epoch, by the clock every time the flow compares is read on
# (a slot, a claim's lapse, a deadline): date(1)'s, plus VM_JOB_CLOCK_OFFSET where the emulator
# has moved its clock (gcp_emulator/core/clock.py; never set on Google Cloud). `now` above takes
# time spans only.
epoch() {
  local s
  s=$(date +%s)
  printf '%s' "$((s + ${VM_JOB_CLOCK_OFFSET:-0}))"
}

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

# step NAME: NAME's step begins (the one under way ends): its duration goes into the summary.
step() {
  local t
  t=$(now)
  [[ -z $STEP ]] || STEP_TIMES+="$STEP $(since "$STEP_AT")"$'\n'
  STEP=$1 STEP_AT=$t
}

# exit_word CODE: the exit code in a word, as the summary's outcome gives it.
exit_word() {
  case $1 in
    0) printf succeeded ;; 1) printf failed ;; 2) printf configuration ;; 3) printf busy ;;
    4) printf timeout ;; 5) printf cloud-api-error ;; 6) printf agent-refused ;;
    7) printf cleanup-failed ;; 8) printf vm-gone ;; 9) printf no-capacity ;;
    10) printf too-late ;; 11) printf nothing-there ;; 12) printf slot-missed ;;
    130 | 143) printf interrupted ;; *) printf 'exit-%s' "$1" ;;
  esac
}

# summary CODE [OUTCOME]: the execution's last line: its slot, run key, instance, outcome (the
# exit code's word, or OUTCOME), exit code, the VM's seconds from RUNNING to stopped for this
# execution (what Compute Engine bills it for; 0 when it did not start it), and each step's
# duration. On Cloud Run one JSON entry, with the slot, run key and instance as Cloud Logging
# labels (logging.googleapis.com/labels) to filter on and to build log-based metrics from;
# elsewhere one text line. Its severity is INFO whatever the outcome: a record, not a second
# report of the error already logged.
summary() {
  local rc=$1 outcome=${2:-} vm_seconds=0 steps="" name secs json_steps="" up down
  outcome=${outcome:-$(exit_word "$rc")}
  step end
  up=${VM_UP_AT:-0} down=${VM_DOWN_AT:-0}
  if ((up > 0)); then
    ((down > 0)) || down=$(now)
    vm_seconds=$(((down - up + 500000) / 1000000))
  fi
  while read -r name secs; do
    [[ -n $name ]] || continue
    steps+="${steps:+, }$name ${secs}s"
    json_steps+="${json_steps:+,}\"$name\":$secs"
  done <<<"$STEP_TIMES"
  local slot=${SLOT_LABEL:-} key=${RUN_KEY:-} instance=${INSTANCE:-} run=${RUN_ID:-}
  if [[ -n ${CLOUD_RUN_JOB:-} ]]; then
    printf '{"severity":"%s","message":"%s","logging.googleapis.com/labels":{"slot":"%s","run_key":"%s","instance":"%s"},"summary":{"slot":"%s","run_key":"%s","instance":"%s","run":"%s","outcome":"%s","exit_code":%d,"vm_billed_seconds":%d,"steps":{%s}}}\n' \
      INFO \
      "$(json_escape "summary: $outcome (exit $rc) slot ${slot:-none}, run key ${key:-none}, $instance, VM ${vm_seconds}s")" \
      "$(json_escape "$slot")" "$(json_escape "$key")" "$(json_escape "$instance")" \
      "$(json_escape "${RUN_SLOT:-}")" "$(json_escape "$key")" "$(json_escape "$instance")" \
      "$(json_escape "$run")" "$outcome" "$rc" "$vm_seconds" "$json_steps" >&2
  else
    log INFO "summary: outcome=$outcome exit=$rc slot=${RUN_SLOT:-none} run_key=${key:-none} instance=$instance run=${run:-none} vm_billed_seconds=$vm_seconds steps: ${steps:-none}"
  fi
}

START=$(now)
