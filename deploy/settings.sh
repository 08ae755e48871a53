# shellcheck shell=bash
# deploy/settings.sh: deploy.env read and checked, every default filled in, and the names and
# sizes derived from them (the accounts' e-mails, the image, the VM's max run duration, the job's
# task timeout). deploy.env.example says what each setting is.
#
# Sets: every setting below, ACCOUNT_VM ACCOUNT_JOB ACCOUNT_SCHEDULER (e-mails), IMAGE_REPO,
#   MAX_RUN_SECONDS, TASK_TIMEOUT_SECONDS, RUN_URI, ROLE_PERMISSIONS, APIS, CHECK_BODY (what the
#   check's scheduler job sends: the job run with `check`), ALERT_POLICY (its display name).
# Reads: DEPLOY_ENV (the settings file; default deploy.env beside deploy.sh).

# The permissions the orchestrator's account needs, and no more (docs/deploy.md says why each);
# tests/test_iam.py runs the whole flow under exactly these.
readonly ORCHESTRATOR_PERMISSIONS=(
  compute.instances.get compute.instances.start compute.instances.stop
  compute.instances.addAccessConfig compute.instances.deleteAccessConfig
  compute.instances.getGuestAttributes compute.instances.getSerialPortOutput
  compute.instances.setLabels compute.zoneOperations.get compute.addresses.get
  compute.addresses.use compute.subnetworks.useExternalIp
)
# What the scheduler's account may do on the Cloud Run job: run it, and run it with `check` as
# its arguments (an override; roles/run.invoker has no run.jobs.runWithOverrides, and
# roles/run.developer could change the job).
readonly SCHEDULER_PERMISSIONS=(run.jobs.run run.jobs.runWithOverrides)
readonly APIS=(
  compute.googleapis.com run.googleapis.com cloudscheduler.googleapis.com
  secretmanager.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com
  iam.googleapis.com storage.googleapis.com logging.googleapis.com monitoring.googleapis.com
)

# Every setting, its default ("" with required: it must be set).
readonly SETTINGS=(
  "PROJECT_ID=" "REGION=" "ZONE=" "REPO_URL=" "SCHEDULE="
  "TIME_ZONE=UTC" "START_DEADLINE=900"
  "ALERT_EMAIL=" "ALERT_WEBHOOK_URL=" "CHECK_MARGIN=60" "CHECK_SCHEDULE="
  "GIT_REF=main" "JOB_ENV_FILE=job.env"
  "INSTANCE=vm-job-runner" "MACHINE_TYPE=e2-small" "BOOT_DISK_SIZE=10GB"
  "BOOT_DISK_TYPE=pd-balanced" "IMAGE_FAMILY=debian-12" "IMAGE_PROJECT=debian-cloud"
  "NETWORK=default" "STATIC_NAME=vm-job-runner-ip" "AGENT_PORT=8000" "AGENT_SOURCE_RANGES=0.0.0.0/0"
  "VM_METADATA=" "FALLBACK_MACHINE_TYPES="
  "BOOT_TIMEOUT=300" "RUN_TIMEOUT=3600" "STOP_TIMEOUT=180" "FIRST_BOOT_TIMEOUT=900"
  "MAX_RETRIES=1"
  "JOB_NAME=vm-job-runner" "SCHEDULER_JOB=" "CHECK_SCHEDULER_JOB=" "IMAGE_REPOSITORY=vm-job-runner"
  "TOKEN_SECRET=agent-token" "ENV_SECRET=app-env"
  "VM_ACCOUNT=vm-agent" "JOB_ACCOUNT=vm-orchestrator" "SCHEDULER_ACCOUNT=vm-scheduler"
  "ROLE_ID=vmJobOrchestrator" "SCHEDULER_ROLE_ID=vmJobScheduler" "FIREWALL_RULE=allow-vm-job-agent" "AGENT_TAG=vm-job-agent"
)
readonly REQUIRED=(PROJECT_ID REGION ZONE REPO_URL SCHEDULE)

# load_settings: deploy.env (or DEPLOY_ENV) read as KEY=value lines, never executed: a value is
# taken as written (quotes around it removed), so a schedule's `*` stays a `*`.
load_settings() {
  local file=${DEPLOY_ENV:-$DEPLOY_DIR/deploy.env} line key value n=0 entry
  check_endpoints
  [[ -f $file ]] ||
    die "no settings file $file: cp deploy.env.example deploy.env and fill it in (or DEPLOY_ENV=path)"
  declare -gA FROM_FILE=()
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^[[:space:]]*([A-Z_][A-Z0-9_]*)=(.*)$ ]] ||
      die "$file:$n: not a KEY=value line: $line"
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    value=${value%"${value##*[![:space:]]}"}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
    known_setting "$key" || die "$file:$n: $key is not a setting of deploy.sh (deploy.env.example lists them)"
    FROM_FILE[$key]=$value
  done <"$file"
  for entry in "${SETTINGS[@]}"; do
    key=${entry%%=*}
    printf -v "$key" '%s' "${FROM_FILE[$key]-${entry#*=}}"
  done
  SETTINGS_FILE=$file
  check_settings
  derive_settings
}

# check_endpoints: no loopback endpoint override for gcloud run or gcloud scheduler.
check_endpoints() {
  local name override
  # gcloud run puts the region before an endpoint override's host: with a loopback override (the
  # emulator's, outside its private network) it would look up REGION-127.0.0.1 on this network
  for name in CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDSCHEDULER; do
    override=${!name:-}
    [[ ! $override =~ ^https?://(127\.|localhost|\[::1\]) ]] ||
      die "$name=$override: deploy.sh runs gcloud run and gcloud scheduler, which resolve a regional name for an override; run it inside the emulator's private network (python -m gcp_emulator run --private-network -- ./deploy.sh …), or unset it for Google Cloud"
  done
}

known_setting() {
  local entry
  for entry in "${SETTINGS[@]}"; do [[ ${entry%%=*} == "$1" ]] && return 0; done
  return 1
}

check_settings() {
  local name missing=()
  for name in "${REQUIRED[@]}"; do [[ -n ${!name} ]] || missing+=("$name"); done
  ((${#missing[@]} == 0)) || die "$SETTINGS_FILE: set ${missing[*]} (deploy.env.example says what each is)"
  for name in START_DEADLINE BOOT_TIMEOUT RUN_TIMEOUT STOP_TIMEOUT FIRST_BOOT_TIMEOUT MAX_RETRIES AGENT_PORT CHECK_MARGIN; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$SETTINGS_FILE: $name must be a whole number of seconds (or a count), not '${!name}'"
  done
  ((AGENT_PORT >= 1 && AGENT_PORT <= 65535)) || die "$SETTINGS_FILE: AGENT_PORT must be a port, not $AGENT_PORT"
  ((MAX_RETRIES <= 10)) || die "$SETTINGS_FILE: MAX_RETRIES is at most 10 (Cloud Run's limit), not $MAX_RETRIES"
  # names as Google takes them: lowercase, digits, hyphens, a letter first, 63 at most
  for name in INSTANCE STATIC_NAME JOB_NAME FIREWALL_RULE AGENT_TAG IMAGE_REPOSITORY VM_ACCOUNT JOB_ACCOUNT SCHEDULER_ACCOUNT; do
    [[ ${!name} =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
      die "$SETTINGS_FILE: $name '${!name}' is not a name Google takes (lowercase letters, digits and hyphens, a letter first, 63 at most)"
  done
  for name in ROLE_ID SCHEDULER_ROLE_ID; do
    [[ ${!name} =~ ^[a-zA-Z0-9_.]{3,64}$ ]] || die "$SETTINGS_FILE: $name '${!name}' is not a role ID (letters, digits, _ and ., 3 to 64)"
  done
  [[ -n $ALERT_EMAIL$ALERT_WEBHOOK_URL ]] ||
    die "$SETTINGS_FILE: set ALERT_EMAIL and/or ALERT_WEBHOOK_URL: a failed or missed slot must reach someone (docs/alerts.md)"
  [[ -z $ALERT_EMAIL || $ALERT_EMAIL =~ ^[^@[:space:],]+@[^@[:space:],]+\.[^@[:space:],]+$ ]] ||
    die "$SETTINGS_FILE: ALERT_EMAIL '$ALERT_EMAIL' is not one e-mail address"
  # the URL may carry a token (?auth_token=...): never echoed
  [[ -z $ALERT_WEBHOOK_URL || $ALERT_WEBHOOK_URL =~ ^https?://[^[:space:]]+$ ]] ||
    die "$SETTINGS_FILE: ALERT_WEBHOOK_URL is not an http(s) URL"
  [[ $CHECK_SCHEDULE != *'|'* ]] || die "$SETTINGS_FILE: CHECK_SCHEDULE cannot hold a |"
  [[ $GIT_REF =~ ^[A-Za-z0-9._/-]+$ ]] || die "$SETTINGS_FILE: GIT_REF '$GIT_REF' is not a branch name"
  [[ -f $JOB_ENV_FILE || -f $DEPLOY_DIR/$JOB_ENV_FILE ]] ||
    die "$SETTINGS_FILE: JOB_ENV_FILE $JOB_ENV_FILE does not exist: write your job's settings there (JOB_COMMAND=…, one KEY=value a line; kept out of git), or point JOB_ENV_FILE at them"
  [[ -f $JOB_ENV_FILE ]] || JOB_ENV_FILE=$DEPLOY_DIR/$JOB_ENV_FILE
  if grep -Eq '^[[:space:]]*AGENT_TOKEN=' "$JOB_ENV_FILE"; then
    die "$JOB_ENV_FILE has an AGENT_TOKEN line: the token lives in its own secret ($TOKEN_SECRET), made by apply; remove the line"
  fi
  [[ $SCHEDULE != *'|'* ]] || die "$SETTINGS_FILE: SCHEDULE cannot hold a |"
}

derive_settings() {
  local shifted
  SCHEDULER_JOB=${SCHEDULER_JOB:-$JOB_NAME-slots}
  CHECK_SCHEDULER_JOB=${CHECK_SCHEDULER_JOB:-$JOB_NAME-check}
  ALERT_POLICY="$JOB_NAME: a slot failed or was missed"
  # the check: the same job with `check` as its arguments, a task of 10 minutes at most
  CHECK_BODY='{"overrides":{"containerOverrides":[{"args":["check"]}],"taskCount":1,"timeoutSeconds":600}}'
  if [[ -z $CHECK_SCHEDULE ]]; then
    shifted=$(python3 "$DEPLOY_DIR/deploy/check_schedule.py" "$SCHEDULE" "$((START_DEADLINE + CHECK_MARGIN))" 2>&1) ||
      die "$SETTINGS_FILE: the check of each slot (entrypoint.sh check): $shifted"
    CHECK_SCHEDULE=$shifted
  fi
  ACCOUNT_VM=$VM_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com
  ACCOUNT_JOB=$JOB_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com
  ACCOUNT_SCHEDULER=$SCHEDULER_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com
  IMAGE_REPO=$REGION-docker.pkg.dev/$PROJECT_ID/$IMAGE_REPOSITORY/$JOB_NAME
  RUN_URI="https://$REGION-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/$PROJECT_ID/jobs/$JOB_NAME:run"
  # The longest boot a run allows: the first run's (FIRST_BOOT_TIMEOUT) or a slot's.
  local boot=$((FIRST_BOOT_TIMEOUT > BOOT_TIMEOUT ? FIRST_BOOT_TIMEOUT : BOOT_TIMEOUT))
  # Compute Engine stops the VM this long after each start, whatever the guest does: the
  # orchestrator's whole budget and a minute.
  MAX_RUN_SECONDS=$((boot + RUN_TIMEOUT + STOP_TIMEOUT + 60))
  # Cloud Run ends a task this long after it starts: the orchestrator's budget, plus 5 minutes
  # for its own steps (claim, address, API calls) and cleanup.
  TASK_TIMEOUT_SECONDS=$((boot + RUN_TIMEOUT + STOP_TIMEOUT + 300))
  ROLE_PERMISSIONS=("${ORCHESTRATOR_PERMISSIONS[@]}")
  [[ -z $FALLBACK_MACHINE_TYPES ]] || ROLE_PERMISSIONS+=(compute.instances.setMachineType)
}
