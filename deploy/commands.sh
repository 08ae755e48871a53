# shellcheck shell=bash
# deploy/commands.sh: what deploy.sh's commands do: plan and apply (every resource, in order,
# then the first run in test mode), status, rotate-token, destroy.
#
# Reads: the settings, ACTION, TEST_RUN, ASSUME_YES, DELETE_ADDRESS. Needs: lib.sh,
#   resources.sh.

# resources: every ensure_ function, in the order a project needs them.
resources() {
  ensure_apis
  ensure_account "$VM_ACCOUNT" "$ACCOUNT_VM" "vm-job-runner VM (reads its secrets)"
  ensure_account "$JOB_ACCOUNT" "$ACCOUNT_JOB" "vm-job-runner Cloud Run job (drives the VM)"
  ensure_account "$SCHEDULER_ACCOUNT" "$ACCOUNT_SCHEDULER" "vm-job-runner Cloud Scheduler (runs the job)"
  ensure_role "$ROLE_ID" "VM job orchestrator" \
    "What vm-job-runner's Cloud Run job needs to run the job on its VM" "${ROLE_PERMISSIONS[@]}"
  ensure_role "$SCHEDULER_ROLE_ID" "VM job scheduler" \
    "What vm-job-runner's Cloud Scheduler jobs need: run the job, and run it with check" \
    "${SCHEDULER_PERMISSIONS[@]}"
  ensure_binding project "$PROJECT_ID" "serviceAccount:$ACCOUNT_JOB" "projects/$PROJECT_ID/roles/$ROLE_ID"
  ensure_token_secret
  ensure_binding secret "$TOKEN_SECRET" "serviceAccount:$ACCOUNT_JOB" roles/secretmanager.secretAccessor
  ensure_binding secret "$TOKEN_SECRET" "serviceAccount:$ACCOUNT_VM" roles/secretmanager.secretAccessor
  ensure_env_secret
  ensure_binding secret "$ENV_SECRET" "serviceAccount:$ACCOUNT_VM" roles/secretmanager.secretAccessor
  ensure_address
  ensure_firewall
  ensure_vm
  ensure_repository
  ensure_image
  ensure_job
  ensure_binding job "$JOB_NAME" "serviceAccount:$ACCOUNT_SCHEDULER" "projects/$PROJECT_ID/roles/$SCHEDULER_ROLE_ID"
  ensure_schedule "$SCHEDULER_JOB" "$SCHEDULE"
  ensure_check_schedule
  ensure_channel email
  ensure_channel webhook
  ensure_alert_policy
}

cmd_plan() {
  local t0
  t0=$(now)
  printf 'Plan for project %s (%s), from %s:\n' "$PROJECT_ID" "$ZONE" "$SETTINGS_FILE"
  resources
  if ((CHANGES == 0)); then
    printf 'No changes: the deployment is as %s wants it.\n' "$SETTINGS_FILE"
  else
    printf '%d to change: ./deploy.sh apply makes them.\n' "$CHANGES"
  fi
  log INFO "plan: $CHANGES to change, $GCLOUD_CALLS gcloud calls, $(since "$t0") s; nothing was changed"
}

cmd_apply() {
  local t0
  t0=$(now)
  log INFO "apply: project $PROJECT_ID, zone $ZONE, from $SETTINGS_FILE"
  resources
  if ((CHANGES == 0 && TEST_RUN < 2)); then
    log INFO "apply: nothing changed ($GCLOUD_CALLS gcloud calls, $(since "$t0") s)"
    return 0
  fi
  log INFO "apply: $CHANGES $(plural "$CHANGES" change changes) made ($GCLOUD_CALLS gcloud calls, $(since "$t0") s)"
  if ((TEST_RUN)); then
    first_run
  else
    log INFO "apply: no run in test mode (--no-test-run); to run one: gcloud run jobs execute $JOB_NAME --region=$REGION --wait --update-env-vars=MODE=test,BOOT_TIMEOUT=$FIRST_BOOT_TIMEOUT"
  fi
  log INFO "apply: done in $(since "$t0") s; the next slot is Cloud Scheduler's ($SCHEDULE, $TIME_ZONE): ./deploy.sh status"
}

plural() { if (($1 == 1)); then printf '%s' "$2"; else printf '%s' "$3"; fi; }

# first_run: the job once, now, in test mode: no slot taken, not bound to START_DEADLINE, and the
# VM's first boot (git, uv, the dependencies: minutes) given FIRST_BOOT_TIMEOUT, so that it
# happens here and not on the first real slot.
first_run() {
  local t0 name
  t0=$(now)
  log INFO "first run: executing $JOB_NAME in test mode (the job gets DRY_RUN=1 and must place no orders), BOOT_TIMEOUT=$FIRST_BOOT_TIMEOUT for the VM's first boot; this takes minutes"
  if gc run jobs execute "$JOB_NAME" --region="$REGION" --wait \
    --update-env-vars="MODE=test,BOOT_TIMEOUT=$FIRST_BOOT_TIMEOUT" --format='value(metadata.name)'; then
    log INFO "first run: $OUT succeeded ($(since "$t0") s): the whole flow works; its log: gcloud logging read 'labels.\"run.googleapis.com/execution_name\"=\"$OUT\"' --order=asc"
    return 0
  fi
  name=$(grep -oE "$JOB_NAME-[a-z0-9]{5}" <<<"$ERR$OUT" | tail -n 1 || true)
  log ERROR "first run: ${name:-the execution} failed ($(since "$t0") s): $(grep -v '^[[:space:]]*$' <<<"$ERR" | tail -n 2 | tr '\n' ' ')"
  log ERROR "first run: its log: gcloud logging read 'labels.\"run.googleapis.com/execution_name\"=\"${name:-EXECUTION}\"' --order=asc --project=$PROJECT_ID; its exit code is in README's table. Fix, then ./deploy.sh apply --test-run (or the gcloud run jobs execute above)"
  exit 1
}

cmd_status() {
  local t0 job state cron tz next last code
  t0=$(now)
  printf 'Deployment in project %s (%s), from %s:\n' "$PROJECT_ID" "$ZONE" "$SETTINGS_FILE"
  resources
  ((CHANGES == 0)) || printf '%d differ from %s: ./deploy.sh plan says how.\n' "$CHANGES" "$SETTINGS_FILE"
  printf '\nVM and address:\n'
  if gc compute instances describe "$INSTANCE" --zone="$ZONE" \
    --format='value[separator="|"](status,machineType.basename(),labels.vm-job-owner,lastStartTimestamp,lastStopTimestamp)'; then
    IFS='|' read -r status type owner started stopped <<<"$OUT"
    printf '  %s is %s (%s)%s; last start %s, last stop %s\n' "$INSTANCE" "$status" "$type" \
      "${owner:+, held by the run $owner}" "${started:-never}" "${stopped:-never}"
  fi
  if gc compute addresses describe "$STATIC_NAME" --region="$REGION" --format='value[separator="|"](address,status,users.basename())'; then
    IFS='|' read -r address status users <<<"$OUT"
    printf '  %s is %s, %s%s\n' "$STATIC_NAME" "$address" "$status" "${users:+ (attached to $users)}"
  fi
  printf '\nSchedule (the slots, and the check of each):\n'
  for job in "$SCHEDULER_JOB" "$CHECK_SCHEDULER_JOB"; do
    [[ $job != "$CHECK_SCHEDULER_JOB" || $CHECK_SCHEDULE != none ]] || continue
    if gc scheduler jobs describe "$job" --location="$REGION" \
      --format='value[separator="|"](state,schedule,timeZone,scheduleTime,lastAttemptTime,status.code)'; then
      IFS='|' read -r state cron tz next last code <<<"$OUT"
      printf '  %s: %s, "%s" in %s; next %s; last delivery %s%s\n' "$job" "$state" \
        "$cron" "$tz" "${next:-none}" "${last:-never}" "${code:+ (status code $code)}"
    fi
  done
  printf '\nLast executions of %s:\n' "$JOB_NAME"
  if gc run jobs executions list --job="$JOB_NAME" --region="$REGION" --limit=5 \
    --format='value[separator="|"](metadata.name,metadata.creationTimestamp,status.completionTime,status.succeededCount,status.failedCount)'; then
    if [[ -z $OUT ]]; then
      printf '  none yet\n'
    else
      printf '  %-28s %-28s %-28s %s\n' EXECUTION STARTED ENDED RESULT
      while IFS='|' read -r name created completed ok failed; do
        printf '  %-28s %-28s %-28s %s\n' "$name" "$created" "${completed:-running}" \
          "$(if [[ ${ok:-0} -gt 0 ]]; then echo succeeded; elif [[ ${failed:-0} -gt 0 ]]; then echo failed; else echo running; fi)"
      done <<<"$OUT"
    fi
  fi
  log INFO "status: $GCLOUD_CALLS gcloud calls, $(since "$t0") s"
}

# cmd_rotate_token: a new version of the token's secret. Both sides take it up with no run
# failing: an execution reads the secret's latest version when it starts, the VM at each boot,
# and an execution that started before and meets a VM that booted after reads it again on the
# agent's 401 (AGENT_TOKEN_SECRET). The version before stays enabled until the next rotation;
# older ones are disabled.
cmd_rotate_token() {
  local what="secret $TOKEN_SECRET" tmp versions old name state latest
  read_resource "$what" secrets describe "$TOKEN_SECRET" --format='value(name)' ||
    die "$what does not exist: ./deploy.sh apply makes it"
  tmp=$(new_token)
  gc secrets versions add "$TOKEN_SECRET" --data-file=- --format='value(name)' <"$tmp" ||
    { rm -f "$tmp"; fail "$what" "adding a new token"; }
  rm -f "$tmp"
  latest=${OUT##*/}
  log INFO "$what: version $latest holds a new token; executions that start from now, and the VM's next boot, use it"
  gc secrets versions list "$TOKEN_SECRET" --format=json || fail "$what" "listing its versions"
  versions=$(canonical versions <<<"$OUT")
  old=()
  while IFS='=' read -r name state; do
    [[ -n $name && $state == ENABLED ]] && ((name < latest - 1)) && old+=("$name")
  done <<<"$versions"
  for name in "${old[@]}"; do
    gc secrets versions disable "$name" --secret="$TOKEN_SECRET" || fail "$what" "disabling version $name"
    log INFO "$what: version $name disabled"
  done
  log INFO "$what: version $((latest - 1)) stays enabled until the next rotate-token (nothing reads it after the runs that began before now have ended)"
}

cmd_destroy() {
  local answer
  printf 'This deletes, in project %s: the alert policy "%s" and its notification channels, the Cloud Scheduler jobs %s and %s, the Cloud Run job %s, the image repository %s, the VM %s and its disk, the firewall rule %s, the secrets %s and %s, the roles %s (and its binding) and %s, the service accounts %s, %s and %s%s.\n' \
    "$PROJECT_ID" "$ALERT_POLICY" "$SCHEDULER_JOB" "$CHECK_SCHEDULER_JOB" "$JOB_NAME" "$IMAGE_REPOSITORY" "$INSTANCE" "$FIREWALL_RULE" \
    "$TOKEN_SECRET" "$ENV_SECRET" "$ROLE_ID" "$SCHEDULER_ROLE_ID" "$VM_ACCOUNT" "$JOB_ACCOUNT" "$SCHEDULER_ACCOUNT" \
    "$(if ((DELETE_ADDRESS)); then printf ', and the static address %s (its IP is gone for good)' "$STATIC_NAME"; fi)" >&2
  ((DELETE_ADDRESS)) || printf 'The static address %s stays (--address deletes it too). The APIs stay enabled.\n' "$STATIC_NAME" >&2
  if ((!ASSUME_YES)); then
    [[ -t 0 ]] || die "destroy asks before deleting, and there is no terminal to ask on: ./deploy.sh destroy --yes"
    read -r -p "Type yes to delete them: " answer
    [[ $answer == yes ]] || die "nothing deleted"
  fi
  if gc compute instances describe "$INSTANCE" --zone="$ZONE" --format='value(labels.vm-job-owner)' && [[ -n $OUT ]]; then
    die "VM $INSTANCE is held by the run $OUT: destroy once it has ended (./deploy.sh status), or cancel it first (gcloud run jobs executions cancel)"
  fi
  local t0
  t0=$(now)
  delete_alerting
  delete "Cloud Scheduler job $CHECK_SCHEDULER_JOB" scheduler jobs delete "$CHECK_SCHEDULER_JOB" --location="$REGION"
  delete "Cloud Scheduler job $SCHEDULER_JOB" scheduler jobs delete "$SCHEDULER_JOB" --location="$REGION"
  delete "Cloud Run job $JOB_NAME" run jobs delete "$JOB_NAME" --region="$REGION"
  delete "Artifact Registry repository $IMAGE_REPOSITORY" artifacts repositories delete "$IMAGE_REPOSITORY" --location="$REGION"
  delete "VM $INSTANCE" compute instances delete "$INSTANCE" --zone="$ZONE"
  delete "firewall rule $FIREWALL_RULE" compute firewall-rules delete "$FIREWALL_RULE"
  ((!DELETE_ADDRESS)) || delete "address $STATIC_NAME" compute addresses delete "$STATIC_NAME" --region="$REGION"
  delete "secret $ENV_SECRET" secrets delete "$ENV_SECRET"
  delete "secret $TOKEN_SECRET" secrets delete "$TOKEN_SECRET"
  delete "project $PROJECT_ID: role $ROLE_ID for $ACCOUNT_JOB" projects remove-iam-policy-binding "$PROJECT_ID" \
    --member="serviceAccount:$ACCOUNT_JOB" --role="projects/$PROJECT_ID/roles/$ROLE_ID" --condition=None
  delete "role $ROLE_ID" iam roles delete "$ROLE_ID" --project="$PROJECT_ID"
  delete "role $SCHEDULER_ROLE_ID" iam roles delete "$SCHEDULER_ROLE_ID" --project="$PROJECT_ID"
  delete "service account $ACCOUNT_VM" iam service-accounts delete "$ACCOUNT_VM"
  delete "service account $ACCOUNT_JOB" iam service-accounts delete "$ACCOUNT_JOB"
  delete "service account $ACCOUNT_SCHEDULER" iam service-accounts delete "$ACCOUNT_SCHEDULER"
  log INFO "destroy: done ($GCLOUD_CALLS gcloud calls, $(since "$t0") s)"
}

# delete_alerting: the alert policy, then the channels apply made (found by their display names:
# whatever ALERT_EMAIL and ALERT_WEBHOOK_URL say now).
delete_alerting() {
  local have kind display list
  if gc alpha monitoring policies list --format=json; then
    have=$(canonical policy "$ALERT_POLICY" <<<"${OUT:-[]}")
    [[ -z $have ]] || delete "alert policy \"$ALERT_POLICY\"" alpha monitoring policies delete "$(value_of name "$have")"
  elif [[ ! $ERR =~ (SERVICE_DISABLED|has[[:space:]]not[[:space:]]been[[:space:]]used|is[[:space:]]disabled) ]]; then
    fail "alert policy \"$ALERT_POLICY\"" "listing the alert policies"
  fi
  gc beta monitoring channels list --format=json || return 0
  list=${OUT:-[]}
  for kind in email webhook; do
    display="$JOB_NAME alerts ($kind)"
    have=$(canonical channel "$display" <<<"$list")
    [[ -z $have ]] || delete "notification channel $display" beta monitoring channels delete "$(value_of name "$have")" --force
  done
}

# delete WHAT ARGS...: gcloud ARGS (a delete); what is already gone is fine.
delete() {
  local what=$1 t0
  shift
  t0=$(now)
  if gc "$@"; then
    log INFO "$what: deleted ($(since "$t0") s)"
  elif [[ $ERR =~ $NOT_FOUND ]]; then
    log INFO "$what: already gone"
  else
    fail "$what" "deleting it"
  fi
}
