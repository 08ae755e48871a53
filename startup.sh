#!/usr/bin/env bash
# startup.sh: the VM's startup-script (Compute Engine runs it as root at every boot). Brings
# the agent's TLS key (made once, kept outside the checkout) and publishes its pin as the guest
# attribute vm-job-agent/tls-pin, brings APP_DIR to the tip of origin/GIT_REF, writes .env from
# Secret Manager, syncs dependencies with uv, and starts the agent (fastapi_app.py) over HTTPS
# as APP_USER: as a systemd service where systemd runs, in the foreground (exec) elsewhere, as
# in the emulator's guest.
#
# Settings, each from the environment first, then the VM's metadata attribute, then a default:
#   APP_DIR     (attribute app-dir)     /opt/vm-job-runner   the checkout
#   REPO_URL    (attribute repo-url)    (none)               cloned into APP_DIR at the first boot
#   REPO_KEY_SECRET (attribute repo-key-secret) (none)       Secret Manager secret holding the
#                                                            SSH deploy key of a private repository
#   GIT_REF     (attribute git-ref)     main                 the branch to run
#   ENV_SECRET  (attribute env-secret)  app-env              Secret Manager secret holding .env
#   TOKEN_SECRET (attribute token-secret) (none)             Secret Manager secret holding the
#                                                            agent's token (the one the job reads);
#                                                            none: .env's AGENT_TOKEN= line
#   APP_USER    (attribute app-user)    jobrunner            the agent's user (never root)
#   AGENT_PORT  (attribute agent-port)  8000
#   AGENT_HOST  (attribute agent-host)  0.0.0.0              the address the agent listens on
#   STATE_DIR   (attribute state-dir)   $APP_DIR/state       run records and logs
#   TLS_DIR     (attribute tls-dir)     /var/lib/vm-job-agent/tls   the agent's key and certificate
#   AGENT_TLS   (attribute agent-tls)   1                    0: plain HTTP (a private network only)
#   BOOT_WATCHDOG (attribute boot-watchdog) 1200             seconds for the agent to answer, else
#                                                            the VM powers itself off; 0: off
# Every step logs what it did and how long it took: this is the serial console, the first
# place to look when a VM never answers. INFO goes to stdout, WARNING and ERROR to stderr (the
# script runner logs stderr as ERROR). It uses no variable the runner does not set (no HOME).
set -Eeuo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" # useradd, runuser: not on every caller's PATH

readonly SERVICE=vm-job-agent
readonly UNIT_FILE=/etc/systemd/system/$SERVICE.service
readonly SUDOERS_FILE=/etc/sudoers.d/$SERVICE
readonly GUEST_NAMESPACE=vm-job-agent # guest attributes: vm-job-agent/tls-pin
GA_WARNED=0 BOOT_STATE_OFF=0
BOOT_ID="" # this boot's id: when startup.sh began, UTC to the millisecond (main sets it)
readonly GA_RETRY_SECONDS=8 # how long a guest-attribute write is retried through 503s
readonly NOFILE=65536                 # the agent's open files: far above its MAX_CONNECTIONS
readonly IDLE_SHUTDOWN_ON_VM=900       # the agent's idle shutdown here, unless .env sets its own
# bounded connections (agent/connections.py): accepted at most 256 at a time, so a burst can
# not outrun the cap to the open-file limit; and a short graceful stop
readonly -a UVICORN_ARGS=(--http agent.connections:GuardedH11Protocol --backlog 256
  --timeout-graceful-shutdown 5)

# log SEVERITY MESSAGE...: one line, stamped in UTC (`2026-12-02T06:00:00Z`): the orchestrator
# takes the console's lines for this boot's from the first one stamped after its start.
log() {
  if [[ $1 == INFO ]]; then
    TZ=UTC0 printf '%(%Y-%m-%dT%H:%M:%SZ)T startup.sh %-7s %s\n' -1 "$1" "${*:2}"
  else
    TZ=UTC0 printf '%(%Y-%m-%dT%H:%M:%SZ)T startup.sh %-7s %s\n' -1 "$1" "${*:2}" >&2
  fi
}
# die MESSAGE: the boot stops here: the reason in the log and as the boot's state `failed:
# <step>: <reason>` (the step is added when the message does not name it).
die() {
  local message=$*
  [[ $message == boot\ * || -z ${BOOT_STEP:-} ]] || message="$BOOT_STEP: $message"
  log ERROR "$message"
  boot_state "failed: $message"
  exit 1
}

# on_error STATUS LINE COMMAND (the ERR trap): a command failed where no check of ours was, and
# set -e ends the script (uv sync refused a download, git reset, useradd): that is a failed boot
# too, published like any other, so the orchestrator knows in seconds, not at BOOT_TIMEOUT. In a
# subshell ($(…)), only that subshell ends: the command around it fails in turn and says so.
on_error() {
  trap - ERR
  ((BASHPID == $$)) || exit "$1"
  local where="startup.sh line $2" i
  for ((i = 1; i + 1 < ${#FUNCNAME[@]}; i++)); do # the functions it was in, innermost first
    [[ ${FUNCNAME[i]} == main ]] || where+=", called from ${FUNCNAME[i + 1]} line ${BASH_LINENO[i]}"
  done
  die "'$3' failed with exit status $1 ($where)"
}
now() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }
since() {
  local d
  d=$(($(now) - $1))
  printf '%d.%02d' $((d / 1000000)) $((d / 10000 % 100))
}

# metadata_attr KEY: the VM's metadata attribute KEY, or nothing (404, no metadata server).
metadata_attr() {
  local host=${GCE_METADATA_HOST:-metadata.google.internal}
  curl -sf --max-time 2 -H 'Metadata-Flavor: Google' \
    "http://$host/computeMetadata/v1/instance/attributes/$1" 2>/dev/null || true
}

# guest_attribute KEY VALUE: publish VALUE as the guest attribute vm-job-agent/KEY, which
# callers with compute.instances.getGuestAttributes read (docs/google-cloud.md, "Guest
# attributes"). The metadata server can answer 503 for a moment during maintenance (Google says
# to retry): a timeout, 429 and 5xx are tried again for GA_RETRY_SECONDS (a refused connection
# is no metadata server at all: not tried again). Returns 0 when
# published, 2 when refused (403: guest attributes are off), 1 when it never got through. Never
# fatal: a VM without guest attributes still boots, and the log says what to set.
guest_attribute() {
  local host=${GCE_METADATA_HOST:-metadata.google.internal} code rc delay=0.25
  local deadline=$((SECONDS + GA_RETRY_SECONDS))
  while :; do
    rc=0
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 3 -X PUT --data-binary "$2" \
      -H 'Metadata-Flavor: Google' \
      "http://$host/computeMetadata/v1/instance/guest-attributes/$GUEST_NAMESPACE/$1" 2>/dev/null) ||
      rc=$?
    ((rc != 7)) || break # connection refused: no metadata server here at all (not a VM)
    [[ $code == 000 || $code == 429 || $code == 5?? || -z $code ]] || break
    ((SECONDS < deadline)) || break
    sleep "$delay"
    [[ $delay == 0.25 ]] && delay=0.5 || delay=1
  done
  case $code in
    200) return 0 ;;
    403)
      ((GA_WARNED++)) && return 2 # said once is enough
      log WARNING "guest attributes are disabled on this VM (the metadata server answered 403 to $GUEST_NAMESPACE/$1): set the metadata key enable-guest-attributes=TRUE (gcloud compute instances add-metadata INSTANCE --metadata=enable-guest-attributes=TRUE); until then the orchestrator cannot verify this agent and sends it nothing"
      return 2
      ;;
    *) log WARNING "could not publish the guest attribute $GUEST_NAMESPACE/$1 (HTTP ${code:-000}, still after ${GA_RETRY_SECONDS}s)" ;;
  esac
  return 1
}

# boot_state STATE: where this boot is, as the guest attribute vm-job-agent/boot: this boot's id
# (BOOT_ID: when startup.sh began, UTC to the millisecond), then the step, `ready`, or `failed:
# <reason>`, so the orchestrator reports a failed boot at once instead of at its BOOT_TIMEOUT,
# and never takes an earlier boot's state for this one's (it compares the id with the VM's
# lastStartTimestamp). Best effort: after a refusal (guest attributes off) it stops trying.
boot_state() {
  [[ $1 != boot\ * ]] || BOOT_STEP=$1
  ((BOOT_STATE_OFF)) && return 0
  local rc=0
  guest_attribute boot "${BOOT_ID:+$BOOT_ID }${1:0:500}" || rc=$?
  ((rc != 2)) || BOOT_STATE_OFF=1 # refused: off for the rest of the boot; a lost write is not
  return 0
}

# setting NAME ATTRIBUTE DEFAULT: set NAME from the environment, the attribute or the default,
# and note where it came from in SOURCES.
setting() {
  local name=$1 attr=$2 default=$3 value source
  if [[ -n ${!name:-} ]]; then
    value=${!name}
    source=environment
  else
    value=$(metadata_attr "$attr")
    source="metadata $attr"
    if [[ -z $value ]]; then
      value=$default
      source=default
    fi
  fi
  printf -v "$name" '%s' "$value"
  SOURCES+=("$name=$value ($source)")
}

# 1. Settings: first those the boot watchdog needs, so that it is armed before anything that can
# fail (an unreadable setting, useradd); a malformed one of them arms it with its default.
watchdog_settings() {
  SOURCES=()
  setting BOOT_WATCHDOG boot-watchdog 1200
  setting AGENT_PORT agent-port 8000
  setting AGENT_HOST agent-host 0.0.0.0
  setting AGENT_TLS agent-tls 1
}

read_settings() {
  setting APP_DIR app-dir /opt/vm-job-runner
  setting REPO_URL repo-url ""
  setting REPO_KEY_SECRET repo-key-secret ""
  setting GIT_REF git-ref main
  setting ENV_SECRET env-secret app-env
  setting TOKEN_SECRET token-secret ""
  setting APP_USER app-user jobrunner
  setting STATE_DIR state-dir "$APP_DIR/state"
  if ((EUID == 0)); then
    setting TLS_DIR tls-dir "/var/lib/$SERVICE/tls"
  else
    setting TLS_DIR tls-dir "$(home_of "$(id -un)")/.local/state/$SERVICE/tls"
  fi
  log INFO "boot 1/6 settings: $(redact "${SOURCES[*]}")"
  [[ $AGENT_TLS == 0 || $AGENT_TLS == 1 ]] || die "AGENT_TLS must be 0 or 1, not '$AGENT_TLS'"
  [[ $BOOT_WATCHDOG =~ ^[0-9]+$ ]] || die "BOOT_WATCHDOG must be seconds (0: off), not '$BOOT_WATCHDOG'"
  { [[ $AGENT_PORT =~ ^[0-9]+$ ]] && ((AGENT_PORT >= 1 && AGENT_PORT <= 65535)); } ||
    die "AGENT_PORT must be a port number, not '$AGENT_PORT'"
  [[ $GIT_REF =~ ^[A-Za-z0-9._/-]+$ ]] || die "GIT_REF '$GIT_REF' is not a branch name"
  if ((EUID == 0)); then
    [[ $APP_USER != root ]] || die "APP_USER must not be root: the agent never runs as root"
    ensure_user
  else
    APP_USER=$(id -un)
    APP_HOME=$(home_of "$APP_USER")
    log INFO "boot 1/6 not root (as on a laptop under the emulator): everything runs as $APP_USER"
  fi
}

ensure_user() {
  if ! id -u "$APP_USER" >/dev/null 2>&1; then
    useradd --system --create-home --home-dir "/home/$APP_USER" --shell /usr/sbin/nologin "$APP_USER"
    log INFO "boot 1/6 created the system user $APP_USER"
  fi
  APP_HOME=$(home_of "$APP_USER")
}

# home_of USER: the user's home directory from the password database (the script runner sets
# no HOME).
home_of() { getent passwd "$1" | cut -d: -f6; }

# redact TEXT: TEXT with the user-info of every URL in it (https://USER:TOKEN@host/…) replaced
# by ***: this log is the serial console, which Cloud Logging keeps.
redact() { sed -E 's#(://)[^/@[:space:]]+@#\1***@#g' <<<"$1"; }

# need_command CMD PACKAGE: install PACKAGE with apt-get (no Recommends: no compiler on a small
# VM's first boot) when CMD is missing, as on a stock Debian image, which has no git. The package
# index is fetched once a boot, not once a package: on a real VM (Debian 12 under QEMU) each
# `apt-get update` took most of a minute.
APT_UPDATED=0
need_command() {
  local cmd=$1 package=$2 t0 err
  command -v "$cmd" >/dev/null && return 0
  t0=$(now)
  if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
    die "$cmd is not installed and cannot be installed here (not root, or no apt-get): install $package on the image"
  fi
  log INFO "$cmd is not installed: installing $package with apt-get"
  if ! err=$( { ((APT_UPDATED)) || apt-get update -qq; } 2>&1 >/dev/null); then
    die "installing $package failed: apt-get update: ${err//$'\n'/ }"
  fi
  APT_UPDATED=1
  if ! err=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$package" 2>&1 >/dev/null); then
    die "installing $package failed: ${err//$'\n'/ }"
  fi
  command -v "$cmd" >/dev/null || die "$package was installed but $cmd cannot be found"
  log INFO "installed $package ($(since "$t0")s)"
}

# The boot watchdog, armed first: if the agent does not answer within BOOT_WATCHDOG seconds
# (a secret that cannot be read, no network, a broken commit) the VM powers itself off, so a
# failed boot with nobody watching (the orchestrator gone, a start by hand) does not bill for
# days. It disarms itself once the agent answers. A background process: it outlives this
# script, as the agent must.
arm_watchdog() {
  local BOOT_WATCHDOG=$BOOT_WATCHDOG AGENT_PORT=$AGENT_PORT AGENT_TLS=$AGENT_TLS name default
  while read -r name default; do # a malformed one: its default here; read_settings stops the boot
    [[ ${!name} =~ ^[0-9]+$ ]] || printf -v "$name" '%s' "$default"
  done <<<$'BOOT_WATCHDOG 1200\nAGENT_PORT 8000\nAGENT_TLS 1'
  if ((BOOT_WATCHDOG == 0)); then
    log WARNING "boot 1/6 boot watchdog off (BOOT_WATCHDOG=0): a failed boot leaves the VM running"
    return
  fi
  log INFO "boot 1/6 boot watchdog: the VM powers itself off at $(date -u -d "+$BOOT_WATCHDOG seconds" +%H:%M:%SZ) (in ${BOOT_WATCHDOG}s) unless the agent answers by then (its lines go to ${SERIAL_CONSOLE:-/dev/ttyS0})"
  watchdog </dev/null &
}

# Its lines go straight to the serial console (SERIAL_CONSOLE, /dev/ttyS0 on Compute Engine),
# not to the script runner's pipes: the current runner closes them when this script exits, and
# the watchdog's last line would then be its death by SIGPIPE, before the poweroff (Go restores
# SIGPIPE's default in the processes it starts); the older runner would wait for it to let go of
# them for the whole BOOT_WATCHDOG. SIGPIPE is ignored all the same: the poweroff comes first.
# The console is opened for each line, not once at the start: the watchdog starts seconds into
# the boot, and the serial getty, starting later, hangs up the console (agetty's vhangup), which
# silently voids every descriptor opened on it before (seen on a real VM: the watchdog powered it
# off without a word).
watchdog() {
  local deadline=$((SECONDS + BOOT_WATCHDOG)) host=${AGENT_HOST:-0.0.0.0} scheme=https
  trap - ERR
  trap '' PIPE
  set +e
  if [[ -w ${SERIAL_CONSOLE:=/dev/ttyS0} ]]; then
    exec >/dev/null 2>&1
  else
    SERIAL_CONSOLE="" # no console of its own (a laptop): its lines go where the script's go
  fi
  [[ $host == 0.0.0.0 ]] && host=127.0.0.1
  ((AGENT_TLS)) || scheme=http
  while ((SECONDS < deadline)); do
    if curl -sfk --max-time 2 -o /dev/null "$scheme://$host:$AGENT_PORT/"; then
      to_console boot_state ready
      to_console log INFO "boot watchdog: the agent answers; disarmed"
      exit 0
    fi
    sleep 1
  done
  to_console log ERROR "boot watchdog: the agent did not answer within ${BOOT_WATCHDOG}s (the boot failed: see above); powering the VM off"
  to_console poweroff
}

# to_console CMD...: the watchdog's CMD, its output on the console opened now.
to_console() {
  if [[ -n $SERIAL_CONSOLE ]]; then
    "$@" >>"$SERIAL_CONSOLE" 2>&1
  else
    "$@"
  fi
}

# as_app CMD...: run CMD as APP_USER, with its own HOME and uv cache.
as_app() {
  if ((EUID == 0)); then
    runuser -u "$APP_USER" -- env HOME="$APP_HOME" UV_CACHE_DIR="$APP_HOME/.cache/uv" "$@"
  else
    "$@"
  fi
}

# 2. The agent's TLS key: made at the first boot (EC P-256, mode 0600, owned by APP_USER) in
# TLS_DIR, outside the checkout, and kept; made again only when missing or unreadable. Its pin
# (curl's --pinnedpubkey format: sha256// and the base64 SHA-256 of the DER public key) is
# published at every boot, before the agent starts: the orchestrator sends the token to no
# other key.
ensure_tls_key() {
  local t0 how=""
  t0=$(now)
  boot_state "boot 2/6 tls"
  TLS_KEY=$TLS_DIR/agent-key.pem
  TLS_CERT=$TLS_DIR/agent-cert.pem
  if ((AGENT_TLS == 0)); then
    log WARNING "boot 2/6 tls: AGENT_TLS=0: the agent serves plain HTTP, and the orchestrator's token crosses the network in the clear"
    return
  fi
  need_command openssl openssl
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  if ((EUID == 0)); then
    chown "$APP_USER:" "$TLS_DIR"
    [[ ! -e $TLS_KEY ]] || chown "$APP_USER:" "$TLS_KEY"
  fi
  if [[ ! -e $TLS_KEY ]]; then
    how="no key yet: made one"
  elif ! as_app openssl pkey -in "$TLS_KEY" -noout >/dev/null 2>&1; then
    how="the key in $TLS_DIR could not be read: made a new one (its pin changes)"
  fi
  if [[ -n $how ]]; then
    new_tls_file "$TLS_KEY" 600 openssl genpkey -algorithm EC \
      -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve
    rm -f "$TLS_CERT"
  else
    how="kept the key in $TLS_DIR"
  fi
  if [[ ! -s $TLS_CERT ]] || [[ $(openssl x509 -in "$TLS_CERT" -noout -pubkey 2>/dev/null) != "$(openssl pkey -in "$TLS_KEY" -pubout)" ]]; then
    new_tls_file "$TLS_CERT" 644 openssl req -x509 -new -key "$TLS_KEY" -days 3650 \
      -subj "/CN=$SERVICE"
  fi
  TLS_PIN="sha256//$(openssl pkey -in "$TLS_KEY" -pubout -outform der | openssl dgst -sha256 -binary | base64)"
  if guest_attribute tls-pin "$TLS_PIN"; then
    how+="; published its pin as the guest attribute $GUEST_NAMESPACE/tls-pin"
  fi
  log INFO "boot 2/6 tls: $how: $TLS_PIN ($(since "$t0")s)"
}

# new_tls_file PATH MODE CMD...: CMD writes PEM on stdout; it lands in PATH (via a temp file in
# the same directory, renamed), with MODE and owned by APP_USER.
new_tls_file() {
  local path=$1 mode=$2 tmp err
  shift 2
  tmp=$(mktemp "$path.XXXXXX")
  if ! err=$("$@" 2>&1 >"$tmp"); then
    rm -f "$tmp"
    die "boot 2/6 tls: $1 failed: ${err//$'\n'/ }"
  fi
  chmod "$mode" "$tmp"
  ((EUID == 0)) && chown "$APP_USER:" "$tmp"
  mv -f "$tmp" "$path"
}

# 3. Code: the tip of origin/GIT_REF, with a hard reset so an edit on the VM cannot block a
# deploy. A failed fetch (network) keeps the code that is there. No checkout yet: REPO_URL is
# cloned into APP_DIR (the first boot).
update_code() {
  local t0 old new err
  t0=$(now)
  boot_state "boot 3/6 code"
  need_command git git
  GIT_ENV=(GIT_TERMINAL_PROMPT=0)
  [[ -z $REPO_KEY_SECRET ]] || deploy_key
  [[ -d $APP_DIR/.git ]] || first_clone
  if ((EUID == 0)) && [[ $(stat -c %U "$APP_DIR") != "$APP_USER" ]]; then
    chown -R "$APP_USER:" "$APP_DIR"
  fi
  old=$(as_app git -C "$APP_DIR" rev-parse --short HEAD)
  if err=$(as_app env "${GIT_ENV[@]}" timeout 120 git -C "$APP_DIR" fetch --quiet origin \
    "+refs/heads/$GIT_REF:refs/remotes/origin/$GIT_REF" 2>&1); then
    as_app git -C "$APP_DIR" reset --quiet --hard "origin/$GIT_REF"
    new=$(as_app git -C "$APP_DIR" rev-parse --short HEAD)
    log INFO "boot 3/6 code: $old -> $new (origin/$GIT_REF) ($(since "$t0")s)"
  else
    log WARNING "$(redact "boot 3/6 code: fetching origin/$GIT_REF failed, keeping $old: ${err//$'\n'/ } ($(since "$t0")s)")"
  fi
}

# A private repository: its SSH deploy key, read from Secret Manager (like .env) at every boot
# into the agent's private directory (TLS_DIR: 0700, APP_USER's, outside the checkout), mode
# 0600; git's ssh uses that key only.
deploy_key() {
  local t0 key
  t0=$(now)
  need_command ssh openssh-client
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  ((EUID == 0)) && chown "$APP_USER:" "$TLS_DIR"
  key=$TLS_DIR/deploy-key
  fetch_secret "$REPO_KEY_SECRET" "$key" "boot 3/6 code: deploy key"
  [[ $(tail -c1 "$SECRET_TMP") == "" ]] || printf '\n' >>"$SECRET_TMP" # ssh wants a last newline
  mv -f "$SECRET_TMP" "$key"
  GIT_ENV+=("GIT_SSH_COMMAND=ssh -i $key -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new")
  log INFO "boot 3/6 code: deploy key from secret $REPO_KEY_SECRET in $key (mode 0600) ($(since "$t0")s)"
}

first_clone() {
  local t0 err
  t0=$(now)
  [[ -n $REPO_URL ]] ||
    die "boot 3/6 no checkout at APP_DIR=$APP_DIR and no repo-url: set the metadata attribute repo-url (gcloud compute instances add-metadata INSTANCE --metadata=repo-url=https://github.com/YOU/vm-job-runner.git), or clone it there once (git clone URL $APP_DIR), or set app-dir"
  if [[ -e $APP_DIR ]] && [[ -n $(ls -A "$APP_DIR") ]]; then
    die "boot 3/6 APP_DIR=$APP_DIR is not empty and not a checkout: move it away, or set app-dir"
  fi
  mkdir -p "$APP_DIR"
  ((EUID == 0)) && chown "$APP_USER:" "$APP_DIR"
  if ! err=$(as_app env "${GIT_ENV[@]}" timeout 300 git clone --quiet --branch "$GIT_REF" \
    "$REPO_URL" "$APP_DIR" 2>&1); then
    rm -rf "${APP_DIR:?}/.git"
    die "$(redact "boot 3/6 cloning $REPO_URL ($GIT_REF) into $APP_DIR failed: ${err//$'\n'/ }")"
  fi
  log INFO "$(redact "boot 3/6 code: first boot: cloned $REPO_URL ($GIT_REF) into $APP_DIR ($(since "$t0")s)")"
}

# fetch_secret SECRET DEST WHAT [MORE]: the secret's latest version into a temp file beside DEST
# (its path in SECRET_TMP), mode 0600 and APP_USER's, for the caller to check and rename over
# DEST; a failed read leaves nothing behind and dies: "WHAT: cannot read secret SECRET: …MORE".
fetch_secret() {
  local err
  SECRET_TMP=$(mktemp "$2.XXXXXX")
  if ! err=$(timeout 120 gcloud secrets versions access latest --secret="$1" --quiet \
    2>&1 >"$SECRET_TMP"); then
    rm -f "$SECRET_TMP"
    die "$3: cannot read secret $1: ${err//$'\n'/ }${4:-}"
  fi
  chmod 600 "$SECRET_TMP"
  if ((EUID == 0)); then chown "$APP_USER:" "$SECRET_TMP"; fi
}

# 4. .env from Secret Manager: written to a temp file, checked, then renamed, mode 0600, owned
# by APP_USER. A failed fetch leaves the old file alone and the agent unstarted. With
# TOKEN_SECRET, the agent's token is that secret's, the one the Cloud Run job reads too (one
# copy: a rotation is one new version), and an AGENT_TOKEN= line in .env is dropped.
write_env() {
  local t0 token="" from="secret $ENV_SECRET" kept
  t0=$(now)
  boot_state "boot 4/6 .env"
  if [[ -n $TOKEN_SECRET ]]; then
    read_token
    from+=", its token from secret $TOKEN_SECRET"
  fi
  fetch_secret "$ENV_SECRET" "$APP_DIR/.env" "boot 4/6 .env" "; the agent is not started"
  if [[ -n $token ]]; then
    if grep -q '^AGENT_TOKEN=' "$SECRET_TMP"; then
      log WARNING "boot 4/6 .env: secret $ENV_SECRET's AGENT_TOKEN= line is ignored: the token is secret $TOKEN_SECRET's (remove the line from $ENV_SECRET)"
    fi
    kept=$(grep -v '^AGENT_TOKEN=' "$SECRET_TMP" || true)
    { [[ -z $kept ]] || printf '%s\n' "$kept"; printf 'AGENT_TOKEN=%s\n' "$token"; } >"$SECRET_TMP"
  elif ! grep -q '^AGENT_TOKEN=' "$SECRET_TMP"; then
    rm -f "$SECRET_TMP"
    die "boot 4/6 .env: secret $ENV_SECRET has no AGENT_TOKEN= line; the agent is not started (the token goes there, or in a secret of its own that the VM's token-secret names)"
  fi
  mv -f "$SECRET_TMP" "$APP_DIR/.env"
  log INFO "boot 4/6 .env: written from $from ($(wc -l <"$APP_DIR/.env") lines, mode 0600) ($(since "$t0")s)"
}

# read_token: `token` (write_env's) from secret TOKEN_SECRET: one line of 16 or more characters
# that .env carries as they are (letters, digits and . _ ~ + / = -: what a generated token and
# base64 use). Never logged.
read_token() {
  fetch_secret "$TOKEN_SECRET" "$APP_DIR/.env" "boot 4/6 .env: the agent's token" "; the agent is not started"
  token=$(<"$SECRET_TMP")
  rm -f "$SECRET_TMP"
  token=${token%$'\r'}
  [[ $token =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]] ||
    die "boot 4/6 .env: secret $TOKEN_SECRET does not hold a token: one line of 16 or more letters, digits or . _ ~ + / = - (it holds ${#token} characters); the agent is not started"
}

# 5. Dependencies: uv sync from the committed lock (uv installed from PyPI first if missing).
sync_deps() {
  local t0
  t0=$(now)
  boot_state "boot 5/6 dependencies"
  ensure_uv
  as_app "$UV_BIN" sync --frozen --no-dev --quiet --directory "$APP_DIR"
  log INFO "boot 5/6 dependencies: uv sync --frozen ($(since "$t0")s)"
}

ensure_uv() {
  UV_BIN=$(command -v uv || true)
  if [[ -n $UV_BIN ]] && as_app "$UV_BIN" --version >/dev/null 2>&1; then
    return
  fi
  log INFO "boot 5/6 uv is missing (or not usable by $APP_USER): installing it from PyPI with pip"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    need_command pip3 python3-pip
  fi
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --root-user-action=ignore uv
  hash -r
  UV_BIN=$(command -v uv || true)
  [[ -n $UV_BIN ]] || die "boot 5/6 uv was installed but is not on PATH ($PATH)"
}

# 6. The agent: a systemd service where systemd runs (written each boot, so a changed setting
# takes effect), else in the foreground with exec, so a stop signal reaches it.
agent_scheme() { if ((AGENT_TLS)); then printf https; else printf http; fi; }

start_agent() {
  boot_state "boot 6/6 agent"
  TLS_ARGS=()
  ((AGENT_TLS)) && TLS_ARGS=(--ssl-keyfile "$TLS_KEY" --ssl-certfile "$TLS_CERT")
  mkdir -p "$STATE_DIR"
  ((EUID == 0)) && chown "$APP_USER:" "$STATE_DIR"
  if ((EUID == 0)) && [[ -d /run/systemd/system ]]; then
    start_service
    return
  fi
  log INFO "boot 6/6 agent: starting in the foreground as $APP_USER on $(agent_scheme)://$AGENT_HOST:$AGENT_PORT (no systemd)"
  cd "$APP_DIR"
  local idle
  idle=$(idle_shutdown_env)
  local -a exec_agent=(env STATE_DIR="$STATE_DIR" ${idle:+"$idle"} "$APP_DIR/.venv/bin/uvicorn" fastapi_app:app
    "${UVICORN_ARGS[@]}" --host "$AGENT_HOST" --port "$AGENT_PORT" "${TLS_ARGS[@]}")
  # open files far above MAX_CONNECTIONS, as the unit's LimitNOFILE (as far as we may)
  ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
  if ((EUID == 0)); then
    exec runuser -u "$APP_USER" -- env HOME="$APP_HOME" "${exec_agent[@]}"
  fi
  exec "${exec_agent[@]}"
}

# idle_shutdown_env: IDLE_SHUTDOWN=900 for the agent (off by default elsewhere: the safety net is
# the VM's), unless .env sets IDLE_SHUTDOWN itself, which the agent then reads there.
idle_shutdown_env() {
  grep -Eq '^[[:space:]]*(export[[:space:]]+)?IDLE_SHUTDOWN=' "$APP_DIR/.env" 2>/dev/null ||
    printf 'IDLE_SHUTDOWN=%s' "$IDLE_SHUTDOWN_ON_VM"
}

start_service() {
  local t0 tries=0
  t0=$(now)
  unit_text >"$UNIT_FILE.tmp"
  mv -f "$UNIT_FILE.tmp" "$UNIT_FILE"
  if command -v sudo >/dev/null; then
    printf '%s ALL=(root) NOPASSWD: /usr/sbin/poweroff\n' "$APP_USER" >"$SUDOERS_FILE.tmp"
    chmod 440 "$SUDOERS_FILE.tmp"
    mv -f "$SUDOERS_FILE.tmp" "$SUDOERS_FILE"
  else
    log WARNING "boot 6/6 no sudo: the agent's idle shutdown cannot power the VM off"
  fi
  systemctl daemon-reload
  systemctl restart "$SERVICE"
  local -a pinned=()
  ((AGENT_TLS)) && pinned=(-k --pinnedpubkey "$TLS_PIN")
  until curl -sf --max-time 1 "${pinned[@]}" "$(agent_scheme)://127.0.0.1:$AGENT_PORT/" >/dev/null; do
    tries=$((tries + 1))
    if ((tries > 150)); then
      die "boot 6/6 agent: $SERVICE did not answer on port $AGENT_PORT within 30 s: journalctl -u $SERVICE"
    fi
    sleep 0.2
  done
  log INFO "boot 6/6 agent: $SERVICE answers on $(agent_scheme)://$AGENT_HOST:$AGENT_PORT as $APP_USER ($(since "$t0")s)"
  boot_state ready
}

unit_text() {
  cat <<EOF
# Written by startup.sh at every boot; edit the settings, not this file.
[Unit]
Description=vm-job-runner agent (fastapi_app.py)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$APP_USER
WorkingDirectory=$APP_DIR
Environment=STATE_DIR=$STATE_DIR $(idle_shutdown_env)
Environment="SHUTDOWN_COMMAND=sudo -n /usr/sbin/poweroff"
ExecStart=$APP_DIR/.venv/bin/uvicorn fastapi_app:app ${UVICORN_ARGS[*]} --host $AGENT_HOST --port $AGENT_PORT${TLS_ARGS[*]:+ ${TLS_ARGS[*]}}
LimitNOFILE=$NOFILE
Restart=on-failure
RestartSec=2
# A stop (the VM's shutdown) sends SIGTERM to the agent alone, which gives a run's job its one
# SIGTERM and KILL_GRACE; what is left after TimeoutStopSec gets SIGKILL (KillMode=control-group,
# systemd's default, would also send the job SIGTERM directly: its handler would run twice).
KillMode=mixed
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
EOF
}

main() {
  local t0
  trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
  t0=$(now)
  # on the clock the orchestrator reads the VM's lastStartTimestamp by, which it is compared
  # with: date(1)'s, plus VM_JOB_CLOCK_OFFSET where the emulator moved its clock (never on
  # Google Cloud)
  BOOT_ID="$(TZ=UTC0 printf '%(%Y-%m-%dT%H:%M:%S)T' "$((${t0:0:-6} + ${VM_JOB_CLOCK_OFFSET:-0}))").${t0: -6:3}Z"
  log INFO "starting (pid $$, user $(id -un), boot $BOOT_ID)"
  watchdog_settings # 1. settings: environment, metadata, defaults; the boot watchdog's first,
  arm_watchdog      #    and the watchdog armed before anything else can fail
  boot_state "boot 1/6 settings"
  read_settings
  ensure_tls_key  # 2. the agent's TLS key, its pin published as a guest attribute
  update_code     # 3. code at origin/GIT_REF
  write_env       # 4. .env from Secret Manager
  sync_deps       # 5. uv sync
  log INFO "boot steps done in $(since "$t0")s"
  start_agent     # 6. the agent
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
