# shellcheck shell=bash
# orchestrator/address.sh: the static address: read it, attach it to the VM's interface as its
# access config (unless it already is), and detach it again in the cleanup.
#
# Sets (results of read_address): STATIC_IP, ADDRESS_USERS (who uses it, "" when nobody).
# Private: OWN_IP (1 once this execution attached the address, found it on its VM, or took it
#   over from the claim's earlier holder).
# Reads: the settings. Needs: logging.sh, compute.sh.

OWN_IP=0

# 2. The static address, read after the claim (an execution that held the VM until a moment
# ago may have detached it since), attached to the VM's interface unless it already is.
attach_static_ip() {
  local t0 users self_link deadline
  t0=$(now)
  deadline=$(($(epoch) + API_TIMEOUT))
  read_address "$deadline"
  users=$ADDRESS_USERS
  self_link="/projects/$PROJECT_ID/zones/$ZONE/instances/$INSTANCE"
  if [[ -n $users ]]; then
    [[ $users == *"$self_link" ]] ||
      die "$EX_CLOUD" "static address $STATIC_NAME ($STATIC_IP) is in use by another resource: $users"
    OWN_IP=1
    log INFO "step 2/6: $STATIC_IP is already attached to $INSTANCE; keeping it ($(since "$t0")s)"
    return
  fi
  OWN_IP=1
  if ! add_access_config "$deadline"; then
    gcloud_said 'At most one access config' ||
      die "$EX_CLOUD" "attaching $STATIC_IP to $INSTANCE: $(last_error)"
    replace_access_config "$deadline"
  fi
  log INFO "step 2/6: attached $STATIC_NAME ($STATIC_IP) to $INSTANCE/$NETWORK_INTERFACE ($(since "$t0")s)"
}

# read_address DEADLINE: STATIC_IP and ADDRESS_USERS (who uses it, "" when nobody) of the
# static address, through the Compute API with curl (transient errors retried until DEADLINE).
read_address() {
  local deadline=$1 delay=1 rc
  local ip_re='"address":[[:space:]]*"([0-9.]+)"' users_re='"users":[[:space:]]*\[([^]]*)\]'
  while :; do
    rc=0
    compute_api GET "regions/$REGION/addresses/$STATIC_NAME"
    api_outcome || rc=$?
    ((rc == 0)) && break
    ((rc == 3 && $(epoch) + delay <= deadline)) ||
      die "$EX_CLOUD" "static address $STATIC_NAME in $REGION: $API_ERROR"
    log WARNING "reading static address $STATIC_NAME: transient error, retrying in ${delay}s: $API_ERROR"
    nap "$delay"
    delay=$((delay * 2 > 16 ? 16 : delay * 2))
  done
  STATIC_IP="" ADDRESS_USERS=""
  [[ $API_BODY =~ $ip_re ]] && STATIC_IP=${BASH_REMATCH[1]}
  [[ -n $STATIC_IP ]] || die "$EX_CLOUD" "static address $STATIC_NAME has no IP address"
  if [[ $API_BODY =~ $users_re ]]; then
    ADDRESS_USERS=${BASH_REMATCH[1]//[\" ]/}
  fi
}

add_access_config() {
  gcloud_call "$1" compute instances add-access-config "$INSTANCE" --zone="$ZONE" \
    --network-interface="$NETWORK_INTERFACE" --access-config-name="$ACCESS_CONFIG_NAME" \
    --address="$STATIC_IP"
}

replace_access_config() {
  local deadline=$1 old
  gcloud_call "$deadline" compute instances describe "$INSTANCE" --zone="$ZONE" \
    --format="value(networkInterfaces[${NETWORK_INTERFACE#nic}].accessConfigs[0].name)" ||
    die "$EX_CLOUD" "describing $INSTANCE: $(last_error)"
  old=$GCLOUD_OUT
  log WARNING "step 2/6: $INSTANCE/$NETWORK_INTERFACE has another access config ('$old'); replacing it"
  gcloud_call "$deadline" compute instances delete-access-config "$INSTANCE" --zone="$ZONE" \
    --network-interface="$NETWORK_INTERFACE" --access-config-name="$old" ||
    die "$EX_CLOUD" "removing access config '$old' from $INSTANCE: $(last_error)"
  add_access_config "$deadline" || die "$EX_CLOUD" "attaching $STATIC_IP to $INSTANCE: $(last_error)"
}

# address_adopt IP: the claim's earlier holder left IP attached as the access config: this
# execution's cleanup detaches it (claim.sh's takeover).
address_adopt() {
  STATIC_IP=$1
  OWN_IP=1
}

# address_owned: true while the cleanup has the address to detach.
address_owned() { ((OWN_IP)); }

# address_disown: leave the address attached (KEEP_VM=1, or the VM is another run's).
address_disown() { OWN_IP=0; }

# detach_static_ip DEADLINE: the cleanup's step: the access config off the VM's interface
# (deleteAccessConfig with curl, its operation followed: a fraction of a second, where a gcloud
# call costs one: the cleanup after a SIGTERM has 10 s in all, and each call is bounded by what
# is left of it); false if that failed.
detach_static_ip() {
  local t0 deadline=$1 delay=1 rc error
  t0=$(now)
  ((OWN_IP)) || return 0
  while :; do
    rc=0
    compute_api POST "zones/$ZONE/instances/$INSTANCE/deleteAccessConfig?accessConfig=$(urlencode "$ACCESS_CONFIG_NAME")&networkInterface=$NETWORK_INTERFACE"
    follow_operation "$deadline" || rc=$?
    ((rc == 3 && $(epoch) + delay <= deadline)) || break
    nap "$delay"
    delay=$((delay * 2 > 4 ? 4 : delay * 2))
  done
  if ((rc == 0)) && ! error=$(operation_error); then
    OWN_IP=0
    log INFO "cleanup: detached $STATIC_IP from $INSTANCE ($(since "$t0")s)"
    return 0
  fi
  error=${error:-$API_ERROR}
  if access_config_gone; then # an earlier, slower detach of the same config got there first
    OWN_IP=0
    log INFO "cleanup: $STATIC_IP is no longer attached to $INSTANCE (the detach said: $error)"
    return 0
  fi
  log ERROR "cleanup: could not detach $STATIC_IP from $INSTANCE: $error"
  return 1
}

# access_config_gone: true when the instance, read now, has no access config ACCESS_CONFIG_NAME.
access_config_gone() {
  local named="\"name\":[[:space:]]*\"$ACCESS_CONFIG_NAME\""
  compute_api GET "zones/$ZONE/instances/$INSTANCE?fields=networkInterfaces"
  [[ $API_CODE == 200 && ! $API_BODY =~ $named ]]
}
