#!/usr/bin/env bash
# deploy.sh: from a Google Cloud project to a running schedule, with gcloud: the APIs, the three
# service accounts, the orchestrator's role and every binding the flow needs, the two secrets
# (the agent's token, generated once; the job's .env), the static address, the firewall rule, the
# VM (left stopped), the job's image, the Cloud Run job and the Cloud Scheduler job, in that
# order; then the job once in test mode, so the VM's slow first boot happens now.
#
# Usage: ./deploy.sh plan                  every resource: exists / create / update: what differs
#        ./deploy.sh apply [--no-test-run | --test-run]
#                                          make what differs, then a run in test mode (when
#                                          something changed; --test-run: always)
#        ./deploy.sh status                every resource and its state, the last executions
#        ./deploy.sh rotate-token          a new agent token, taken up by both sides
#        ./deploy.sh destroy [--yes] [--address]
#                                          delete what apply made (the static address only with
#                                          --address), after asking
# Settings: deploy.env beside this file (DEPLOY_ENV=path for another); deploy.env.example says
# what each is. The job's own settings come from JOB_ENV_FILE (job.env), never from deploy.env.
# docs/deploy.md says what each step does and why. Exit: 0 done; 1 failed (the message says which
# resource and what to do); 2 usage.
set -Eeuo pipefail

DEPLOY_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=deploy/lib.sh
source "$DEPLOY_DIR/deploy/lib.sh"       # log lines, the plan's lines, gcloud calls and errors
# shellcheck source=deploy/settings.sh
source "$DEPLOY_DIR/deploy/settings.sh"  # deploy.env, checked, and what follows from it
# shellcheck source=deploy/resources.sh
source "$DEPLOY_DIR/deploy/resources.sh" # one ensure_ function per resource
# shellcheck source=deploy/commands.sh
source "$DEPLOY_DIR/deploy/commands.sh"  # plan, apply, status, rotate-token, destroy

usage() {
  sed -n '/^# Usage:/,/^# Settings:/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

main() {
  (($# >= 1)) || usage
  ACTION=$1
  shift
  TEST_RUN=1 ASSUME_YES=0 DELETE_ADDRESS=0
  local arg
  for arg in "$@"; do
    case $ACTION:$arg in
      apply:--no-test-run) TEST_RUN=0 ;;
      apply:--test-run) TEST_RUN=2 ;;
      destroy:--yes) ASSUME_YES=1 ;;
      destroy:--address) DELETE_ADDRESS=1 ;;
      *) usage ;;
    esac
  done
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud is not on PATH: install the Google Cloud CLI (cloud.google.com/sdk/docs/install)"
  command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH (deploy.sh reads gcloud's JSON with it)"
  export CLOUDSDK_CORE_DISABLE_PROMPTS=1
  load_settings
  case $ACTION in
    plan) cmd_plan ;;
    apply) cmd_apply ;;
    status) cmd_status ;;
    rotate-token) cmd_rotate_token ;;
    destroy) cmd_destroy ;;
    *) usage ;;
  esac
}

main "$@"
