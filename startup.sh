#!/usr/bin/env bash
# startup.sh: the VM's startup-script (Compute Engine runs it as root at every boot). Brings
# the agent's TLS key (made once, kept outside the checkout) and publishes its pin as the guest
# attribute vm-job-agent/tls-pin, brings APP_DIR to the tip of origin/GIT_REF, writes .env from
# Secret Manager, syncs dependencies with uv, and starts the agent (fastapi_app.py) over HTTPS
# as APP_USER: as a systemd service where systemd runs, in the foreground (exec) elsewhere, as
# in the emulator's guest. The key, the code, the secrets and uv's install run side by side.
# It needs bash, curl and coreutils (python3's standard library to install uv and to word a
# refusal), no gcloud: the secrets are read with the VM's own token from the metadata server
# through Secret Manager's REST API.
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
# how long a secret's read is tried again through 429s, 5xx, no answer or no token yet (60 s;
# from the environment for tests)
[[ ${SECRET_RETRY_SECONDS:-} =~ ^[0-9]+$ ]] || SECRET_RETRY_SECONDS=60
readonly SECRET_RETRY_SECONDS
STEP_PID=$$    # the process whose failure is the boot's: the script, or a step running beside it
STATES_QUIET=0 # 1 while steps run side by side: only failures are published (never a step's
#               progress over another's failure)
STAGE=""       # a private directory (0700, /run: memory) for what the steps hand over: the .env
declare -A JOBS=() # the steps running beside the script: name -> pid
readonly NOFILE=65536                 # the agent's open files: far above its MAX_CONNECTIONS
readonly IDLE_SHUTDOWN_ON_VM=900       # the agent's idle shutdown here, unless .env sets its own
# bounded connections (agent/connections.py): accepted at most 256 at a time, so a burst can
# not outrun the cap to the open-file limit; and a short graceful stop
readonly -a UVICORN_ARGS=(--http agent.connections:GuardedH11Protocol --backlog 256
  --timeout-graceful-shutdown 5)

# What startup.sh asks of python3 (its standard library only), where bash and curl fall short,
# neither on a warm boot's way (a Python start costs a second or two on a small VM's cold disk):
#   error RESP          a Google error answer: STATUS, REASON, MESSAGE (separated by \x1f)
#   uv INDEX DEST       uv's wheel for this machine from PyPI's JSON API at INDEX, its sha256
#                       checked, the uv binary in it unpacked to DEST; prints what it installed
read -r -d '' HELPER_PY <<'PY' || true
import json, os, sys  # each mode imports the rest it needs: a start costs less on a small VM

def fetch(url, tries=4):
    import time, urllib.request
    for n in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read()
        except Exception as e:  # noqa: BLE001 (any failure is tried again, then reported)
            if n == tries - 1 or getattr(e, "code", 500) < 500 and getattr(e, "code", 0) != 429:
                sys.exit(f"{url}: {e}")
            time.sleep(2 ** n)

def uv(index, dest):
    import hashlib, io, platform, urllib.parse, zipfile
    page = f"{index.rstrip('/')}/pypi/uv/json"
    info = json.loads(fetch(page))
    version, arch = info["info"]["version"], platform.machine()
    def fits(name):
        tags = name[:-4].split("-")[-1].split(".")
        return any(t.startswith("manylinux") and t.endswith("_" + arch) for t in tags)
    wheels = sorted((u for u in info["urls"] if u["filename"].endswith(".whl")
                     and fits(u["filename"]) and not u.get("yanked")), key=lambda u: u["filename"])
    if not wheels:
        sys.exit(f"PyPI has no uv {version} wheel for {arch} Linux")
    wheel = wheels[0]
    data = fetch(urllib.parse.urljoin(page, wheel["url"]))  # a mirror may answer relative URLs
    got = hashlib.sha256(data).hexdigest()
    if got != wheel["digests"]["sha256"]:
        sys.exit(f"{wheel['filename']}: its sha256 is {got}, PyPI says {wheel['digests']['sha256']}")
    tmp = dest + ".tmp"
    with zipfile.ZipFile(io.BytesIO(data)) as z, open(tmp, "wb") as f:
        f.write(z.read(f"uv-{version}.data/scripts/uv"))
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    print(f"uv {version} ({wheel['filename']}, sha256 checked)")

def error(resp):
    text = open(resp, errors="replace").read()
    try:
        e = json.loads(text)["error"]
        reasons = [d.get("reason", "") for d in e.get("details", []) if isinstance(d, dict)]
        fields = [e.get("status", ""), ",".join(r for r in reasons if r), e.get("message", "")]
    except (ValueError, KeyError, TypeError, AttributeError):
        fields = ["", "", " ".join(text.split())[:300]]
    print("\x1f".join(" ".join(str(f).split()) for f in fields))

{"error": error, "uv": uv}[sys.argv[1]](*sys.argv[2:])
PY

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
  ((BASHPID != $$)) || end_steps
  exit 1
}

# on_error STATUS LINE COMMAND (the ERR trap): a command failed where no check of ours was, and
# set -e ends the script (uv sync refused a download, git reset, useradd): that is a failed boot
# too, published like any other, so the orchestrator knows in seconds, not at BOOT_TIMEOUT. In a
# subshell ($(…)), only that subshell ends: the command around it fails in turn and says so. A
# step running beside the script (spawn) is a boot of its own here: it publishes its failure.
on_error() {
  trap - ERR
  ((BASHPID == STEP_PID)) || exit "$1"
  local where="startup.sh line $2" i
  for ((i = 1; i + 1 < ${#FUNCNAME[@]}; i++)); do # the functions it was in, innermost first
    [[ ${FUNCNAME[i]} == main ]] || where+=", called from ${FUNCNAME[i + 1]} line ${BASH_LINENO[i]}"
  done
  die "'$3' failed with exit status $1 ($where)"
}
# spawn NAME FUNCTION: FUNCTION run beside the script, as a step of its own: a failure in it
# (die, or a command no check caught) is published by the step itself, naming it.
spawn() {
  (
    STEP_PID=$BASHPID
    "$2"
  ) &
  JOBS[$1]=$!
}

# await_steps NAME...: wait for those steps; 0 when each succeeded. One that failed has published
# why (exit 1); one that ended any other way (a signal) is published here.
await_steps() {
  local name rc failed=0
  for name; do
    [[ -n ${JOBS[$name]:-} ]] || continue
    rc=0
    wait "${JOBS[$name]}" || rc=$?
    unset "JOBS[$name]"
    if ((rc == 1)); then
      failed=1
    elif ((rc != 0)); then
      log ERROR "boot: the $name step ended with status $rc"
      boot_state "failed: boot: the $name step ended with status $rc"
      failed=1
    fi
  done
  return "$failed"
}

# end_steps: the boot stops: the steps still running are waited for (not killed: an apt-get cut
# short leaves dpkg half done for the next boot), and what they handed over is removed.
end_steps() {
  local pid
  for pid in "${JOBS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  JOBS=()
  if [[ -n $STAGE ]]; then rm -rf "$STAGE"; fi
  STAGE=""
}

now() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }
since() {
  local d
  d=$(($(now) - $1))
  printf '%d.%02d' $((d / 1000000)) $((d / 10000 % 100))
}

# metadata_get PATH: the metadata server's value at PATH (computeMetadata/v1/PATH), or nothing
# (404, no metadata server).
metadata_get() {
  local host=${GCE_METADATA_HOST:-metadata.google.internal}
  curl -sf --max-time 2 -H 'Metadata-Flavor: Google' \
    "http://$host/computeMetadata/v1/$1" 2>/dev/null || true
}

# load_attributes: the names of the VM's metadata attributes (instance/attributes/ lists them),
# so that a setting without an attribute costs no request (each is a curl, a tenth of a second
# or more in a small VM's first seconds), and the project's id (PROJECT_ID, for Secret
# Manager), both in one request over one connection. Unreadable (no metadata server):
# metadata_attr asks for each, secret_access for the project.
declare -A ATTR_NAMES=()
ATTRS_LISTED=0 PROJECT_ID=""
load_attributes() {
  local md="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1" codes name
  codes=$(curl -s --max-time 2 -H 'Metadata-Flavor: Google' -w '%{http_code} ' \
    -o "$STAGE/attributes" "$md/instance/attributes/" \
    -o "$STAGE/project-id" "$md/project/project-id" 2>/dev/null) || true
  if [[ $codes == "200 200 " ]]; then PROJECT_ID=$(<"$STAGE/project-id"); fi
  if [[ $codes == 200\ * ]]; then
    while IFS= read -r name; do
      [[ -z $name ]] || ATTR_NAMES[$name]=1
    done <"$STAGE/attributes"
    ATTRS_LISTED=1
  fi
  rm -f "$STAGE/attributes" "$STAGE/project-id"
}

# metadata_attr KEY: the VM's metadata attribute KEY, or nothing.
metadata_attr() {
  if ((ATTRS_LISTED)) && [[ -z ${ATTR_NAMES[$1]:-} ]]; then
    return 0
  fi
  metadata_get "instance/attributes/$1"
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
  ((STATES_QUIET)) && [[ $1 != failed:* ]] && return 0
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
# `apt-get update` took most of a minute. Steps side by side take turns (a lock in STAGE), so
# two never run apt-get at once, and the second finds the index, or its command, there.
APT_UPDATED=0
need_command() {
  local cmd=$1 package=$2 t0 err lock
  command -v "$cmd" >/dev/null && return 0
  t0=$(now)
  if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
    die "$cmd is not installed and cannot be installed here (not root, or no apt-get): install $package on the image"
  fi
  if [[ -n $STAGE ]]; then
    exec {lock}>>"$STAGE/apt.lock"
    flock "$lock"
    [[ ! -e $STAGE/apt-updated ]] || APT_UPDATED=1
    if command -v "$cmd" >/dev/null; then # installed by the step that held the lock
      exec {lock}>&-
      return 0
    fi
  fi
  log INFO "$cmd is not installed: installing $package with apt-get"
  if ! err=$( { ((APT_UPDATED)) || apt-get update -qq; } 2>&1 >/dev/null); then
    die "installing $package failed: apt-get update: ${err//$'\n'/ }"
  fi
  APT_UPDATED=1
  if [[ -n $STAGE ]]; then : >"$STAGE/apt-updated"; fi
  if ! err=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$package" 2>&1 >/dev/null); then
    die "installing $package failed: ${err//$'\n'/ }"
  fi
  command -v "$cmd" >/dev/null || die "$package was installed but $cmd cannot be found"
  if [[ -n ${lock:-} ]]; then exec {lock}>&-; fi
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
  local t0 how="" pub
  t0=$(now)
  boot_state "boot 2/6 tls"
  tls_paths
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
  # the key's public half, read as APP_USER: readable, a key, and what the pin and the
  # certificate are checked against (one openssl, not one a check: each costs on a small VM)
  if [[ -e $TLS_KEY ]]; then
    pub=$(as_app openssl pkey -in "$TLS_KEY" -pubout 2>/dev/null) || pub=""
    [[ -n $pub ]] || how="the key in $TLS_DIR could not be read: made a new one (its pin changes)"
  else
    how="no key yet: made one"
  fi
  if [[ -n $how ]]; then
    new_tls_file "$TLS_KEY" 600 openssl genpkey -algorithm EC \
      -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve
    rm -f "$TLS_CERT"
    pub=$(openssl pkey -in "$TLS_KEY" -pubout)
  else
    how="kept the key in $TLS_DIR"
  fi
  if [[ ! -s $TLS_CERT ]] || [[ $(openssl x509 -in "$TLS_CERT" -noout -pubkey 2>/dev/null) != "$pub" ]]; then
    new_tls_file "$TLS_CERT" 644 openssl req -x509 -new -key "$TLS_KEY" -days 3650 \
      -subj "/CN=$SERVICE"
  fi
  # the PEM's body is the DER public key in base64
  TLS_PIN="sha256//$(sed '/^-----/d' <<<"$pub" | base64 -d | openssl dgst -sha256 -binary | base64)"
  if [[ -n $STAGE ]]; then printf '%s' "$TLS_PIN" >"$STAGE/tls-pin"; fi # for the agent's start
  if guest_attribute tls-pin "$TLS_PIN"; then
    how+="; published its pin as the guest attribute $GUEST_NAMESPACE/tls-pin"
  fi
  log INFO "boot 2/6 tls: $how: $TLS_PIN ($(since "$t0")s)"
}

tls_paths() {
  TLS_KEY=$TLS_DIR/agent-key.pem
  TLS_CERT=$TLS_DIR/agent-cert.pem
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
  SECRET_TMP=$(mktemp "$2.XXXXXX")
  if ! secret_access "$1" "$SECRET_TMP"; then
    rm -f "$SECRET_TMP"
    die "$3: cannot read secret $1: $SECRET_ERROR${4:-}"
  fi
  chmod 600 "$SECRET_TMP"
  if ((EUID == 0)); then chown "$APP_USER:" "$SECRET_TMP"; fi
}

# retry_pause DEADLINE: the pause before another try: sleep `delay` (the caller's local: 0.5 s
# at first, then 1, 2, 4, up to 8 s), unless that would pass DEADLINE (in SECONDS): 1 then.
retry_pause() {
  ((SECONDS + ${delay%.*} < $1)) || return 1
  sleep "$delay"
  [[ $delay == 0.5 ]] && delay=1 || delay=$((delay * 2 > 8 ? 8 : delay * 2))
}

# vm_token: ACCESS_TOKEN, the VM's service account's OAuth token, from the metadata server
# (instance/service-accounts/default/token: {"access_token", "expires_in", "token_type"}), kept
# until a minute before it expires. Tried again for SECRET_RETRY_SECONDS while the server does
# not answer, answers 429/5xx, or has no token yet (404: early in a boot, or no account). On
# failure: 1, the reason in SECRET_ERROR. The token is never logged, nor put on a command line.
ACCESS_TOKEN="" TOKEN_UNTIL=0
vm_token() {
  local host=${GCE_METADATA_HOST:-metadata.google.internal} answer code rc delay=0.5
  local deadline=$((SECONDS + SECRET_RETRY_SECONDS)) re_token re_expires
  ((SECONDS >= TOKEN_UNTIL)) || return 0
  re_token='"access_token"[[:space:]]*:[[:space:]]*"([A-Za-z0-9._~+/=-]+)"'
  re_expires='"expires_in"[[:space:]]*:[[:space:]]*([0-9]+)'
  while :; do
    rc=0
    answer=$(curl -s --max-time 5 -w '\n%{http_code}' -H 'Metadata-Flavor: Google' \
      "http://$host/computeMetadata/v1/instance/service-accounts/default/token" 2>/dev/null) ||
      rc=$?
    code=${answer##*$'\n'}
    ((rc == 0)) || code=000
    if [[ $code == 200 && $answer =~ $re_token ]]; then
      ACCESS_TOKEN=${BASH_REMATCH[1]}
      [[ $answer =~ $re_expires ]] && TOKEN_UNTIL=$((SECONDS + BASH_REMATCH[1] - 60)) || TOKEN_UNTIL=0
      return 0
    fi
    [[ $code == 000 || $code == 404 || $code == 429 || $code == 5?? ]] || break
    retry_pause "$deadline" || break
  done
  case $code in
    404) SECRET_ERROR="the metadata server has no token for the VM's default service account (HTTP 404 for ${SECRET_RETRY_SECONDS}s): give the VM one (stop it, then gcloud compute instances set-service-account INSTANCE --service-account=EMAIL --scopes=cloud-platform)" ;;
    000) SECRET_ERROR="the metadata server ($host) did not answer for its token (after ${SECRET_RETRY_SECONDS}s)" ;;
    200) SECRET_ERROR="the metadata server's token answer is not one (no access_token in it)" ;;
    429 | 5??) SECRET_ERROR="the metadata server answered HTTP $code for the VM's token (still after ${SECRET_RETRY_SECONDS}s)" ;;
    *) SECRET_ERROR="the metadata server answered HTTP $code for the VM's token" ;;
  esac
  return 1
}

# secretmanager_base: SM_BASE, Secret Manager's endpoint:
# CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER when set (what gcloud honours: the emulator), else
# Google's. The token goes in the clear only
# to this machine or the metadata server's address (the emulator's relay), never across a
# network: anything else must be https, whose certificate curl checks.
secretmanager_base() {
  local base=${CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER:-https://secretmanager.googleapis.com/}
  [[ $base == */ ]] || base+=/
  if [[ $base != https://* ]] &&
    ! [[ $base =~ ^http://(127\.[0-9.]+|localhost|\[::1\]|169\.254\.169\.254)(:[0-9]+)?/ ]]; then
    SECRET_ERROR="CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER=$base is neither https nor this machine: the VM's token would cross the network in the clear"
    return 1
  fi
  SM_BASE=$base
}

# secret_access NAME OUT: the latest version of secret NAME, in the VM's project
# (CLOUDSDK_CORE_PROJECT when set, else the metadata server's project-id), into OUT: Secret
# Manager's `versions/latest:access` with the VM's token, the base64 payload decoded and its
# CRC32C (dataCrc32c) checked. 429, 5xx, no answer, a checksum that does not match: tried again,
# with backoff, for SECRET_RETRY_SECONDS; a 401 once with a new token. On failure: 1, the reason
# in SECRET_ERROR, with what to do about it.
secret_access() {
  local name=$1 out=$2 project url resp code rc delay=0.5 renewed=0 status reason
  local message email who deadline=$((SECONDS + SECRET_RETRY_SECONDS))
  if ! [[ $name =~ ^[A-Za-z0-9_-]{1,255}$ ]]; then
    SECRET_ERROR="'$name' is not a secret's name (letters, digits, - and _)"
    return 1
  fi
  secretmanager_base || return 1
  project=${CLOUDSDK_CORE_PROJECT:-${PROJECT_ID:-$(metadata_get project/project-id)}}
  if [[ -z $project ]]; then
    SECRET_ERROR="no project: the metadata server does not say project/project-id"
    return 1
  fi
  vm_token || return 1
  url="${SM_BASE}v1/projects/$project/secrets/$name/versions/latest:access"
  resp=$(mktemp "$out.answer.XXXXXX")
  while :; do
    rc=0
    code=$(printf 'header = "Authorization: Bearer %s"\n' "$ACCESS_TOKEN" |
      curl -s --proto =https,http --max-time 30 -K - -o "$resp" -w '%{http_code}' "$url" \
        2>/dev/null) || rc=$?
    ((rc == 0)) || code=000
    if [[ $code == 200 ]]; then
      rc=0
      decode_payload "$resp" "$out" || rc=$?
      if ((rc == 0)); then
        rm -f "$resp"
        return 0
      fi
      ((rc == 3)) || break # not a payload: not a thing to retry
    elif [[ $code == 401 ]] && ((!renewed)); then
      renewed=1 TOKEN_UNTIL=0
      vm_token || { rm -f "$resp"; return 1; }
      continue
    elif ! [[ $code == 000 || $code == 429 || $code == 5?? ]]; then
      break
    fi
    retry_pause "$deadline" || break
  done
  if [[ $code == 200 ]]; then
    SECRET_ERROR=$SECRET_DETAIL
    rm -f "$resp"
    return 1
  fi
  if [[ $code == 000 ]]; then
    SECRET_ERROR="no answer from $url (after ${SECRET_RETRY_SECONDS}s)"
    rm -f "$resp"
    return 1
  fi
  if command -v python3 >/dev/null; then
    IFS=$'\x1f' read -r status reason message < <(python3 -I -S -c "$HELPER_PY" error "$resp") || true
  else # the answer as it is, on one line
    message=$(tr -s '[:space:]' ' ' <"$resp" | head -c 300)
  fi
  rm -f "$resp"
  email=$(metadata_get instance/service-accounts/default/email)
  who="the VM's service account${email:+ $email}"
  email=${email:-EMAIL}
  case "$code $status $reason" in
    *SERVICE_DISABLED*)
      SECRET_ERROR="the Secret Manager API is not enabled in project $project: $message (gcloud services enable secretmanager.googleapis.com --project=$project)" ;;
    *ACCESS_TOKEN_SCOPE_INSUFFICIENT*)
      SECRET_ERROR="the VM's access scopes do not reach Secret Manager: $message (stop the VM, then gcloud compute instances set-service-account INSTANCE --service-account=$email --scopes=cloud-platform)" ;;
    403*)
      SECRET_ERROR="permission denied: $message: $who needs roles/secretmanager.secretAccessor on secret $name (gcloud secrets add-iam-policy-binding $name --project=$project --member=serviceAccount:$email --role=roles/secretmanager.secretAccessor)" ;;
    404*)
      SECRET_ERROR="not found: $message (no secret $name with an enabled version in project $project: gcloud secrets versions add $name --data-file=FILE, or name the right secret in the VM's metadata)" ;;
    401*)
      SECRET_ERROR="the VM's token was refused (${status:-HTTP 401}): $message" ;;
    *FAILED_PRECONDITION*)
      SECRET_ERROR="$message (enable a version, or add one: gcloud secrets versions add $name --data-file=FILE)" ;;
    429* | 5*)
      SECRET_ERROR="HTTP $code ${status:+$status: }$message (still after ${SECRET_RETRY_SECONDS}s)" ;;
    *)
      SECRET_ERROR="HTTP $code ${status:+$status: }$message" ;;
  esac
  return 1
}

# decode_payload RESP OUT: a versions/latest:access answer's payload (Google's JSON:
# {"name", "payload": {"data": BASE64, "dataCrc32c": INT64, as a string or a number}}) decoded
# into OUT (mode 0600), its CRC32C checked when given: 0, with SECRET_DETAIL checked|unchecked;
# 3: the CRC32C does not match; 4: not a payload (then no OUT). With bash and coreutils: no
# Python start on a boot's way.
decode_payload() {
  local answer data crc
  answer=$(<"$1")
  if ! [[ $answer =~ \"data\"[[:space:]]*:[[:space:]]*\"([A-Za-z0-9+/=]*)\" ]]; then
    SECRET_DETAIL="Secret Manager's answer is not a payload"
    return 4
  fi
  data=${BASH_REMATCH[1]}
  if ! (umask 077 && base64 -d <<<"$data" >"$2") 2>/dev/null; then
    rm -f "$2"
    SECRET_DETAIL="Secret Manager's answer is not a payload (its data is not base64)"
    return 4
  fi
  SECRET_DETAIL=unchecked
  [[ $answer =~ \"dataCrc32c\"[[:space:]]*:[[:space:]]*\"?([0-9]+)\"? ]] || return 0
  crc=${BASH_REMATCH[1]}
  if [[ $(crc32c_file "$2") != "$((10#$crc))" ]]; then
    rm -f "$2"
    SECRET_DETAIL="its CRC32C does not match its data: it was damaged on the way"
    return 3
  fi
  SECRET_DETAIL=checked
}

# crc32c_file FILE: the CRC32C (Castagnoli, as Secret Manager's dataCrc32c) of FILE's bytes.
CRC32C_TABLE=()
crc32c_file() {
  local crc=0xFFFFFFFF b i j c
  if ((${#CRC32C_TABLE[@]} == 0)); then
    for ((i = 0; i < 256; i++)); do
      c=$i
      for ((j = 0; j < 8; j++)); do c=$(((c >> 1) ^ (0x82F63B78 & -(c & 1)))); done
      CRC32C_TABLE[i]=$c
    done
  fi
  for b in $(od -An -v -tu1 "$1"); do
    crc=$((CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)))
  done
  printf '%d' $((crc ^ 0xFFFFFFFF))
}

# 4. .env from Secret Manager, read beside the other steps into STAGE (env: mode 0600), checked;
# install_env puts it in APP_DIR once the code is there. With TOKEN_SECRET, the agent's token is
# that secret's, the one the Cloud Run job reads too (one copy: a rotation is one new version),
# and an AGENT_TOKEN= line in .env is dropped. A failed read leaves the old .env alone and the
# agent unstarted.
read_env() {
  local t0 token="" from="secret $ENV_SECRET" kept crc="CRC32C checked"
  t0=$(now)
  boot_state "boot 4/6 .env"
  if [[ -n $TOKEN_SECRET ]]; then
    read_token
    from+=", its token from secret $TOKEN_SECRET"
    [[ $SECRET_DETAIL == checked ]] || crc="no CRC32C given to check"
  fi
  fetch_secret "$ENV_SECRET" "$STAGE/env" "boot 4/6 .env" "; the agent is not started"
  [[ $SECRET_DETAIL == checked ]] || crc="no CRC32C given to check"
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
  mv -f "$SECRET_TMP" "$STAGE/env"
  log INFO "boot 4/6 .env: read from $from ($(wc -l <"$STAGE/env") lines, $crc) ($(since "$t0")s)"
}

env_then_key() {
  read_env
  ensure_tls_key
}

# install_env: the .env read_env checked, renamed over APP_DIR/.env (mode 0600, APP_USER's).
install_env() {
  local tmp
  tmp=$(mktemp "$APP_DIR/.env.XXXXXX")
  cat "$STAGE/env" >"$tmp"
  chmod 600 "$tmp"
  if ((EUID == 0)); then chown "$APP_USER:" "$tmp"; fi
  mv -f "$tmp" "$APP_DIR/.env"
  log INFO "boot 4/6 .env: in place at $APP_DIR/.env (mode 0600)"
}

# read_token: `token` (read_env's) from secret TOKEN_SECRET: one line of 16 or more characters
# that .env carries as they are (letters, digits and . _ ~ + / = -: what a generated token and
# base64 use). Never logged.
read_token() {
  fetch_secret "$TOKEN_SECRET" "$STAGE/env" "boot 4/6 .env: the agent's token" "; the agent is not started"
  token=$(<"$SECRET_TMP")
  rm -f "$SECRET_TMP"
  token=${token%$'\r'}
  [[ $token =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]] ||
    die "boot 4/6 .env: secret $TOKEN_SECRET does not hold a token: one line of 16 or more letters, digits or . _ ~ + / = - (it holds ${#token} characters); the agent is not started"
}

# 5. Dependencies: uv sync from the committed lock, once the code and uv are there.
sync_deps() {
  local t0
  t0=$(now)
  boot_state "boot 5/6 dependencies"
  [[ -n $UV_BIN ]] || uv_usable || die "boot 5/6 uv cannot be run by $APP_USER (uv on PATH or in $(uv_home))"
  as_app "$UV_BIN" sync --frozen --no-dev --quiet --directory "$APP_DIR"
  log INFO "boot 5/6 dependencies: uv sync --frozen ($(since "$t0")s)"
}

# uv_usable: UV_BIN, uv on PATH or where install_uv puts it, when it runs as APP_USER (else
# UV_BIN is empty: install_uv's, in a step of its own, is looked for again by sync_deps).
uv_usable() {
  UV_BIN=$(PATH="$PATH:$(uv_home)" command -v uv || true)
  [[ -n $UV_BIN ]] && as_app "$UV_BIN" --version >/dev/null 2>&1 && return 0
  UV_BIN=""
  return 1
}

# uv_home: where install_uv puts uv: /usr/local/bin as root, else ~/.local/bin.
uv_home() {
  if ((EUID == 0)); then printf /usr/local/bin; else printf '%s/.local/bin' "$APP_HOME"; fi
}

# install_uv (beside the other steps, first boot): uv's own wheel from PyPI (its JSON API,
# PYPI_URL in the environment for a mirror), its sha256 checked against PyPI's, the binary
# unpacked with python3's zipfile: no pip, which a stock image lacks and apt-get takes most of a
# minute to bring.
install_uv() {
  local t0 what index=${PYPI_URL:-https://pypi.org}
  t0=$(now)
  boot_state "boot 5/6 dependencies"
  need_command python3 python3
  log INFO "boot 5/6 uv: not installed (or not usable by $APP_USER): installing it from $index"
  mkdir -p "$(uv_home)"
  if ! what=$(python3 -I -S -c "$HELPER_PY" uv "$index" "$(uv_home)/uv" 2>&1); then
    die "boot 5/6 installing uv from $index failed: ${what//$'\n'/ }"
  fi
  log INFO "boot 5/6 uv: installed $what in $(uv_home) ($(since "$t0")s)"
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
  if command -v sudo >/dev/null; then
    printf '%s ALL=(root) NOPASSWD: /usr/sbin/poweroff\n' "$APP_USER" >"$SUDOERS_FILE.tmp"
    chmod 440 "$SUDOERS_FILE.tmp"
    mv -f "$SUDOERS_FILE.tmp" "$SUDOERS_FILE"
  else
    log WARNING "boot 6/6 no sudo: the agent's idle shutdown cannot power the VM off"
  fi
  if ! cmp -s "$UNIT_FILE.tmp" "$UNIT_FILE"; then # a reload costs seconds on a small VM
    mv -f "$UNIT_FILE.tmp" "$UNIT_FILE"
    systemctl daemon-reload
  fi
  rm -f "$UNIT_FILE.tmp"
  systemctl restart "$SERVICE"
  local -a pinned=()
  ((AGENT_TLS)) && pinned=(-k --pinnedpubkey "$TLS_PIN")
  until curl -sf --max-time 1 "${pinned[@]}" "$(agent_scheme)://127.0.0.1:$AGENT_PORT/" >/dev/null; do
    tries=$((tries + 1))
    if ((tries > 60)); then
      die "boot 6/6 agent: $SERVICE did not answer on port $AGENT_PORT within 30 s: journalctl -u $SERVICE"
    fi
    sleep 0.5 # each try is a curl, which a small VM's CPU, busy importing the agent, pays for
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
  # what the steps hand each other: private (0700), in memory (/run) where we may
  STAGE=$(mktemp -d "$( ((EUID == 0)) && [[ -w /run ]] && printf /run || printf '%s' "${TMPDIR:-/tmp}")/$SERVICE.XXXXXX")
  load_attributes   # 1. settings: environment, metadata (the names listed once), defaults; the
  watchdog_settings #    boot watchdog's first, and the watchdog armed before anything can fail
  arm_watchdog
  boot_state "boot 1/6 settings"
  read_settings
  # 2.-5. side by side: the code (then uv sync, once uv is there too); the secrets, then the key
  # (one after the other: each step beside the others slows them down on a small VM's CPUs, and
  # these two together take less time than the code and its sync); uv's install on a first boot
  boot_state "boot 2/6 tls, code, .env and dependencies, side by side"
  STATES_QUIET=1
  spawn code update_code       # 3. code at origin/GIT_REF
  spawn .env+tls env_then_key  # 4. .env from Secret Manager, into STAGE; 2. the agent's TLS key
  uv_usable || spawn uv install_uv
  if ! await_steps code uv; then
    end_steps # each failed step has published why
    exit 1
  fi
  sync_deps                    # 5. uv sync
  if ! await_steps .env+tls; then
    end_steps
    exit 1
  fi
  install_env
  tls_paths # what the key step made, for the agent's start
  if [[ -s $STAGE/tls-pin ]]; then TLS_PIN=$(<"$STAGE/tls-pin"); fi
  end_steps
  STATES_QUIET=0
  log INFO "boot steps done in $(since "$t0")s"
  start_agent                 # 6. the agent
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
