#!/usr/bin/env bash
# entrypoint.sh: the Cloud Run job. Claim the VM (one execution at a time), attach the static
# IP to it, start it, wait for its agent, run the job through the agent's API, print the job's
# log, and always stop the VM, detach the IP and give the claim back, for what this execution
# took on, whatever happens (trap on EXIT, INT, TERM).
# The token goes only over TLS to the key whose pin the VM published as the guest attribute
# vm-job-agent/tls-pin, read through the Compute API (docs/orchestrator.md, "How the trust works").
#
# This file is the plan; each step's work is in orchestrator/, one concern a module, each
# saying in its header what it owns and reads.
#
# Required: PROJECT_ID REGION ZONE STATIC_NAME AGENT_TOKEN, and INSTANCE or INSTANCES.
# Optional (defaults in docs/orchestrator.md, "Settings"): AGENT_PORT MODE BOOT_TIMEOUT
#   RUN_TIMEOUT STOP_TIMEOUT API_TIMEOUT HEALTH_INTERVAL KEEP_VM ACCESS_CONFIG_NAME
#   NETWORK_INTERFACE AGENT_TLS AGENT_ADDRESS PIN_WAIT FALLBACK_MACHINE_TYPES SCHEDULE TIME_ZONE
#   START_DEADLINE RERUN_FAILED AGENT_TOKEN_SECRET CHECK_MARGIN; from Cloud Run: CLOUD_RUN_JOB
#   CLOUD_RUN_EXECUTION CLOUD_RUN_TASK_INDEX CLOUD_RUN_TASK_ATTEMPT CLOUD_RUN_TASK_COUNT.
# Exit codes: 0 the run succeeded; 1 it failed, was cancelled or interrupted; 2 configuration;
#   3 the VM is busy (another execution holds its claim, or a run is in progress on it);
#   4 boot failed, or boot or run timeout; 5 Cloud API error;
#   6 the agent refused or answered nonsense, or its TLS key is not the one the VM published
#   (or the VM published none); 7 cleanup failed (the VM may still be up, or its claim was
#   not given back); 8 the VM went away during the run (stopped, preempted, deleted);
#   9 no capacity (the zone had none for the VM's machine types within BOOT_TIMEOUT);
#   10 too late for the slot (START_DEADLINE passed before the job could start);
#   11 status or logs found nothing there (the VM is not running, or has no such run);
#   12 slot missed (check: the slot's run failed, was cut off, is still running past its
#   window, or never started); 130/143 interrupted by SIGINT/SIGTERM.
# Only the job's log goes to stdout; everything else is a log line on stderr.
set -Eeuo pipefail

ORCHESTRATOR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/orchestrator
# shellcheck source=orchestrator/json.sh
source "$ORCHESTRATOR/json.sh"         # a JSON string escaped, a field read (no jq)
# shellcheck source=orchestrator/logging.sh
source "$ORCHESTRATOR/logging.sh"      # exit codes, log lines, the clock
# shellcheck source=orchestrator/children.sh
source "$ORCHESTRATOR/children.sh"     # long commands as children, so a signal acts at once
# shellcheck source=orchestrator/settings.sh
source "$ORCHESTRATOR/settings.sh"     # step 1: the configuration, the token put away
# shellcheck source=orchestrator/compute.sh
source "$ORCHESTRATOR/compute.sh"      # gcloud and the Compute REST API, retries, errors
# shellcheck source=orchestrator/slot.sh
source "$ORCHESTRATOR/slot.sh"         # once per scheduled slot: the key, duplicates, the window
# shellcheck source=orchestrator/claim.sh
source "$ORCHESTRATOR/claim.sh"        # step 2: one execution at a time (the label)
# shellcheck source=orchestrator/address.sh
source "$ORCHESTRATOR/address.sh"      # step 2: the static address attached, detached
# shellcheck source=orchestrator/vm.sh
source "$ORCHESTRATOR/vm.sh"           # step 3: the VM started, its status, stopped
# shellcheck source=orchestrator/capacity.sh
source "$ORCHESTRATOR/capacity.sh"     # step 3: a zone without capacity, other machine types
# shellcheck source=orchestrator/watcher.sh
source "$ORCHESTRATOR/watcher.sh"      # step 4: the boot's guest attributes and console
# shellcheck source=orchestrator/agent.sh
source "$ORCHESTRATOR/agent.sh"        # step 4: the agent's health, its pinned key, its calls
# shellcheck source=orchestrator/token.sh
source "$ORCHESTRATOR/token.sh"        # step 5: the agent's token renewed after a rotation
# shellcheck source=orchestrator/run.sh
source "$ORCHESTRATOR/run.sh"          # steps 5, 6: the run started, followed, cancelled
# shellcheck source=orchestrator/job_log.sh
source "$ORCHESTRATOR/job_log.sh"      # step 6: the job's log onto stdout, line by line
# shellcheck source=orchestrator/cleanup.sh
source "$ORCHESTRATOR/cleanup.sh"      # step 7: the cleanup, the signals
# shellcheck source=orchestrator/inspect.sh
source "$ORCHESTRATOR/inspect.sh"      # the read-only commands: status, logs
# shellcheck source=orchestrator/check.sh
source "$ORCHESTRATOR/check.sh"        # the read-only command check: did a slot run and succeed

COMMAND=run SUMMARY=0 # the command; 1 when its end is a summary line (a run's, a check's)

usage() {
  cat <<USAGE
usage: entrypoint.sh [run | status | logs [RUN_ID] | check [SLOT] | --help]
  run      (the default, as Cloud Run and Cloud Scheduler call it) attach the static IP, start
           the VM, run the job through its agent, always stop the VM and detach the IP
  status   the VM's status, the address and where it is attached, which execution holds the
           VM (its claim), the boot's state, and, when the agent answers, its health and its
           last runs
  logs     a run's output (the latest run's without RUN_ID); the VM must be running (exit 11
           when it is not, or has no such run)
  check    did a scheduled slot run and succeed, by the VM's own record: SLOT (like
           2026-12-07T09:00+09:00), or the latest due by now - START_DEADLINE - CHECK_MARGIN;
           exit 0 when it succeeded (or is under way within its window), 12 when it was missed
           (failed, cut off, still running past its window, never started); needs SCHEDULE
status, logs and check only read: they never start, stop, attach or detach anything. The
settings are the same as a run's (docs/orchestrator.md); status and check need no AGENT_TOKEN
(without it, status lists no runs).
USAGE
}

main() {
  case ${1:-run} in
    run) ;;
    status) (($# == 1)) || die "$EX_CONFIG" "status takes no arguments (got: ${*:2})" ;;
    logs)
      (($# <= 2)) || die "$EX_CONFIG" "logs takes one run id at most (got: ${*:2})"
      [[ -z ${2:-} || $2 =~ ^[0-9a-f]{32}$ ]] ||
        die "$EX_CONFIG" "a run id is 32 hex characters (as status lists them), not '$2'"
      ;;
    check) (($# <= 2)) || die "$EX_CONFIG" "check takes one slot at most (got: ${*:2})" ;;
    -h | --help | help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "$EX_CONFIG" "unknown command '$1' (run, status, logs, check)"
      ;;
  esac
  trap cleanup EXIT                 # 7. always: cancel, stop, detach, release what we took on
  trap 'on_signal 143 SIGTERM' TERM
  trap 'on_signal 130 SIGINT' INT
  COMMAND=${1:-run}
  if [[ $COMMAND == check ]]; then  # read-only, with a summary line like a run's
    SUMMARY=1
    check_config check
    check_slot "${2:-}"
    exit 0
  fi
  if [[ $COMMAND != run ]]; then    # read-only: the cleanup finds nothing of ours to undo
    check_config "$1"
    if [[ $1 == status ]]; then status; else show_logs "${2:-}"; fi
    exit 0
  fi
  SUMMARY=1                         # the execution's last line says how it went (logging.sh)
  step config
  check_config                      # 1. configuration, before any cloud call
  slot_setup                        #    the scheduled slot and the run's key
  log INFO "step 1/6: $MODE on $INSTANCE in $ZONE (project $PROJECT_ID), address $STATIC_NAME, agent port $AGENT_PORT"
  step claim
  claim_vm                          # 2. the VM claimed for this execution
  step address
  attach_static_ip                  #    and the static IP on it
  step start
  start_vm                          # 3. VM started, its boot watched
  step boot
  wait_for_agent                    # 4. agent answers, with the key the VM published
  step run
  start_run                         # 5. run started (or found again)
  wait_for_run                      # 6. run ended; its log printed
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
