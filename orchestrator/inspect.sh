# shellcheck shell=bash
# orchestrator/inspect.sh: the read-only commands, `status` and `logs [RUN_ID]`, with a run's
# settings: what the VM, its address, its claim, its boot and its agent are doing now, and a
# run's output. They never start, stop, attach or detach anything.
#
# Sets nothing of its own. Reads: the settings, and the results that the modules it calls
# offer. Needs: logging.sh, json.sh, compute.sh, vm.sh, address.sh, claim.sh, watcher.sh,
# agent.sh, job_log.sh.

# status: what the VM, its address, its boot and its agent are doing now; changes nothing.
status() {
  describe_vm
  printf 'instance  %s in %s: %s (internal address %s, external %s)\n' "$INSTANCE" "$ZONE" \
    "$VM_STATUS" "${VM_INTERNAL:-none}" "${VM_NAT:-none}"
  need_token
  read_address $(($(epoch) + API_TIMEOUT))
  if [[ -n $ADDRESS_USERS ]]; then
    printf 'address   %s %s: attached to %s\n' "$STATIC_NAME" "$STATIC_IP" "${ADDRESS_USERS##*/}"
  else
    printf 'address   %s %s: not attached\n' "$STATIC_NAME" "$STATIC_IP"
  fi
  if read_labels; then
    printf 'claim     %s\n' "${HOLDER:+held: $CLAIM_LABEL=$HOLDER, $(claim_lapse "$HOLDER")}${HOLDER:-none: the VM is free for an execution}"
    printf 'guard     %s (a run may need %ss)\n' "$(run_limit_words)" "$(run_limit_needed)"
    slot_status
  else
    printf 'claim     could not read it: %s\n' "$CLAIM_ERROR"
  fi
  read_attributes || true
  printf 'boot      %s\n' "${BOOT_READ:-(no state published)}"
  if [[ $VM_STATUS != RUNNING ]]; then
    printf 'agent     not running: the VM is %s\n' "$VM_STATUS"
    return 0
  fi
  if [[ $AGENT_ADDRESS == internal ]]; then agent_url_of "$VM_INTERNAL"; else agent_url_of "$STATIC_IP"; fi
  status_agent
}

# status_agent: the agent's health and, over the pinned key, its last runs.
status_agent() {
  local line
  health
  if [[ $HTTP_CODE != 200 ]]; then
    printf 'agent     %s: no answer (%s)\n' "$AGENT_URL" "$(last_agent_error)"
    return 0
  fi
  printf 'agent     %s: %s, version %s, busy=%s\n' "$AGENT_URL" "$(json_field status)" \
    "$(json_field version)" "$(busy_flag)"
  if ! have_token; then
    printf 'runs      not asked: AGENT_TOKEN is not set\n'
    return 0
  fi
  if ((AGENT_TLS)); then
    if [[ -z $PIN_READ ]]; then
      printf 'runs      not asked: the VM published no TLS key pin, so the token goes nowhere\n'
      return 0
    fi
    use_pin "$PIN_READ"
  fi
  agent GET "/runs?limit=5" 10
  if [[ $HTTP_CODE != 200 ]]; then
    printf 'runs      could not list them: %s\n' "$(last_agent_error)"
    return 0
  fi
  printf 'runs      (newest first)\n'
  while IFS= read -r line; do
    printf '  %s  %-11s exit %-4s %s -> %s  %s\n' "$(json_field id "$line")" \
      "$(json_field status "$line")" "$(json_field exit_code "$line")" \
      "$(json_field started_at "$line")" "$(json_field finished_at "$line")" \
      "$(json_field error "$line")"
  done < <(printf '%s\n' "${BODY//\},\{/$'}\n{'}" | grep '"id":')
}

# logs [RUN_ID]: a run's output, from the agent on the running VM; changes nothing. RUN_ID was
# checked by main, before any cloud call.
show_logs() {
  local run_id=${1:-} status
  describe_vm
  [[ $VM_STATUS == RUNNING ]] ||
    die "$EX_NOTHING_THERE" "$INSTANCE is $VM_STATUS: the runs' logs are on its disk, readable while it runs (./entrypoint.sh with KEEP_VM=1, then logs)"
  need_token
  if [[ $AGENT_ADDRESS == internal ]]; then
    agent_url_of "$VM_INTERNAL"
  else
    read_address $(($(epoch) + API_TIMEOUT))
    agent_url_of "$STATIC_IP"
  fi
  if ((AGENT_TLS)); then
    read_attributes || true
    [[ -n $PIN_READ ]] || die "$EX_AGENT" "$INSTANCE published no TLS key pin: is enable-guest-attributes=TRUE set?"
    use_pin "$PIN_READ"
  fi
  if [[ -z $run_id ]]; then
    agent GET "/runs?limit=1" 10
    [[ $HTTP_CODE == 200 ]] || die "$EX_AGENT" "listing runs: $(last_agent_error)"
    run_id=$(json_field id)
    [[ -n $run_id ]] || die "$EX_NOTHING_THERE" "$INSTANCE has no runs yet"
  fi
  agent GET "/runs/$run_id" 10
  [[ $HTTP_CODE != 404 ]] ||
    die "$EX_NOTHING_THERE" "$INSTANCE has no run $run_id (./entrypoint.sh status lists its last runs)"
  [[ $HTTP_CODE == 200 ]] || die "$EX_AGENT" "reading run $run_id: $(last_agent_error)"
  status=$(json_field status)
  log INFO "the output of run $run_id ($status, exit code $(json_field exit_code)) follows on stdout"
  log_follow "$run_id"
  while :; do
    fetch_log 0 30
    [[ $HTTP_CODE == 200 ]] || die "$EX_AGENT" "reading run $run_id's log: $(last_agent_error)"
    ((LOG_GOT)) || break
  done
  log_end
}
