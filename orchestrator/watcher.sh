# shellcheck shell=bash
# orchestrator/watcher.sh: the VM's boot, watched in the background from the moment it is RUNNING
# until the agent answers: the guest attributes startup.sh writes at every boot (the agent's key
# pin vm-job-agent/tls-pin; the boot's state vm-job-agent/boot: the step, `ready`, or
# `failed: <reason>`), read through the Compute API so that IAM decides who may
# (compute.instances.getGuestAttributes), and the serial console's startup-script lines relayed
# into our log as [vm] lines.
#
# Every WATCH_INTERVAL s, with curl and the one access token (a gcloud start-up per read would cost
# 0.5 s of CPU each, and lag): on no critical path. A pin from an earlier boot is the same key unless the
# VM made a new one (agent.sh's reread_pin). A boot state names its boot (startup.sh's start,
# UTC to the millisecond: `2026-12-02T06:00:01.234Z boot 3/6 code`) and counts when that is at
# or after the VM's lastStartTimestamp: a fresh failure is known at the next read, whatever came
# before it, and an earlier boot's `failed:` is never this one's. (A state without a boot id,
# from an older startup.sh, counts once this boot has written one that is not a failure.)
#
# The watcher is a subshell: what it learns reaches the orchestrator through files in WORK_DIR
# (pin, boot-state, serial-next), read by the functions below.
# Sets (results): PIN_READ, BOOT_READ and BOOT_READ_ID (read_attributes: the boot's state, and
#   the boot it names, "" for none), PUBLISHED_PIN (published_pin); PIN_ATTRIBUTE (constant).
# Private: WATCHER_PID, SERIAL_NEXT (where the next read of the console begins), CONSOLE_SINCE
#   (startup.sh's stamp from which the console's lines are this boot's).
# Reads: the settings, LAST_START_ID (vm.sh: this boot's start, in the form of a boot id).
# Needs: logging.sh, children.sh, compute.sh.

readonly GUEST_NAMESPACE=vm-job-agent
readonly PIN_ATTRIBUTE=$GUEST_NAMESPACE/tls-pin
# Seconds between reads of the guest attributes, and of the serial console, while the VM boots,
# the console's a second after the attributes', so that no second holds more than two reads.
# Each read is a Compute API request, counted against the project's per-minute read quota with
# every task's; a failed boot is still known within about 2 s, a boot line within about 3.
readonly WATCH_INTERVAL=2 CONSOLE_INTERVAL=3
WATCHER_PID=""
SERIAL_NEXT=0
CONSOLE_SINCE=""

# start_watcher DEADLINE: the watcher, until DEADLINE (epoch seconds) at the latest.
start_watcher() {
  (
    trap 'kill_child; exit 1' TERM
    local deadline=$1 last="" read_at=0 relay_at
    relay_at=$(($(now) + 1000000))
    while :; do
      if (($(now) >= read_at)) && read_attributes; then
        keep_pin
        [[ -z $BOOT_READ || $BOOT_READ == failed:* ]] || : >"$WORK_DIR/boot-progress"
        if [[ -n $BOOT_READ && $BOOT_READ != "$last" ]] && this_boots_state; then
          last=$BOOT_READ
          printf '%s' "$BOOT_READ" >"$WORK_DIR/boot-state.tmp"
          mv -f "$WORK_DIR/boot-state.tmp" "$WORK_DIR/boot-state"
          case $BOOT_READ in
            boot\ *) log INFO "[vm] $BOOT_READ" ;; # startup.sh's steps: boot 1/6 … boot 6/6
            *) log INFO "[vm] boot $BOOT_READ" ;;   # boot ready, boot failed: <reason>
          esac
          [[ $BOOT_READ != failed:* ]] || : >"$WORK_DIR/failure-logged"
        fi
      fi
      (($(now) < read_at)) || read_at=$(($(now) + WATCH_INTERVAL * 1000000))
      if (($(now) >= relay_at)); then
        relay_at=$(($(now) + CONSOLE_INTERVAL * 1000000))
        if relay_console && [[ $(cat "$WORK_DIR/boot-state" 2>/dev/null) != failed:* ]]; then
          printf 'failed: %s' "$(console_error)" >"$WORK_DIR/boot-state.tmp"
          mv -f "$WORK_DIR/boot-state.tmp" "$WORK_DIR/boot-state"
        fi
      fi
      (($(epoch) < deadline)) || exit 1
      nap 0.25
    done
  ) &
  WATCHER_PID=$!
}

# keep_pin: the pin just read (PIN_READ), for published_pin, unless one is kept already.
keep_pin() {
  if ((AGENT_TLS)) && [[ -n $PIN_READ && ! -s $WORK_DIR/pin ]]; then
    printf '%s' "$PIN_READ" >"$WORK_DIR/pin.$BASHPID"
    mv -f "$WORK_DIR/pin.$BASHPID" "$WORK_DIR/pin"
  fi
}

# read_pin_now: the agent answers and no pin is kept yet: read it now rather than at the
# watcher's next turn (up to WATCH_INTERVAL later).
read_pin_now() {
  [[ ! -s $WORK_DIR/pin ]] || return 0
  if read_attributes; then keep_pin; fi
}

# published_pin: true once the watcher has read the VM's pin, then in PUBLISHED_PIN.
published_pin() {
  PUBLISHED_PIN=""
  [[ -s $WORK_DIR/pin ]] || return 1
  PUBLISHED_PIN=$(<"$WORK_DIR/pin")
}

stop_watcher() {
  [[ -n $WATCHER_PID ]] || return 0
  kill "$WATCHER_PID" 2>/dev/null || true
  wait "$WATCHER_PID" 2>/dev/null || true
  WATCHER_PID=""
}

# A boot that startup.sh reported failed (vm-job-agent/boot is `failed: <reason>`) ends the
# wait at once, with the reason and the last lines of the VM's serial console.
boot_failed() {
  local state
  [[ -s $WORK_DIR/boot-state ]] || return 0
  state=$(<"$WORK_DIR/boot-state")
  [[ $state == failed:* ]] || return 0
  stop_watcher
  # the console's failure line came first: the state startup.sh published, read once more
  if [[ ! -e $WORK_DIR/failure-logged ]] && read_attributes && [[ $BOOT_READ == failed:* ]] &&
    this_boots_state; then
    log INFO "[vm] boot $BOOT_READ"
    state=$BOOT_READ
  fi
  relay_rest
  die "$EX_TIMEOUT" "step 4/6: $INSTANCE's boot failed: ${state#failed: }. The serial console: gcloud compute instances get-serial-port-output $INSTANCE --zone=$ZONE"
}

# The reason of a boot that the script runner says failed: startup.sh's last ERROR line, or
# the runner's own ("the startup script failed with error: exit status N").
console_error() { cat "$WORK_DIR/console-error" 2>/dev/null || printf 'the startup script failed'; }

# relay_console: the VM's serial console from SERIAL_NEXT on, as `gcloud compute instances
# get-serial-port-output --start=N` reads it (GET instances/NAME/serialPort?port=1&start=N,
# with curl): each line the script runner marks as the startup script's (the newer runner's
# `Metadata key("startup-script"), command("…"): <line>`, the legacy `startup-script: <line>`)
# of this boot (this_boot_lines) into our log, marked [vm]; a line cut at the end of the read
# waits for the rest. True when the runner says this boot's script failed (`Script
# "startup-script" failed with error: …`, Debian's 20211116: `startup-script exit status N`).
relay_console() {
  local n next line severity reason stamp failed=1 next_re='"next":[[:space:]]*"([0-9]+)"'
  [[ ! -e $WORK_DIR/console-refused ]] || return 1
  compute_api GET "zones/$ZONE/instances/$INSTANCE/serialPort?port=1&start=$SERIAL_NEXT"
  console_refused && return 1
  [[ $API_CODE == 200 && $API_BODY =~ $next_re ]] || return 1
  next=${BASH_REMATCH[1]}
  { cat "$WORK_DIR/serial.partial" 2>/dev/null; console_text <<<"$API_BODY"; } >"$WORK_DIR/serial.txt"
  n=$(tr -dc '\n' <"$WORK_DIR/serial.txt" | wc -c) # complete lines; the rest waits
  tail -n +"$((n + 1))" "$WORK_DIR/serial.txt" >"$WORK_DIR/serial.partial"
  while IFS=$'\x1f' read -r stamp line; do
    severity=INFO
    [[ $line =~ ^startup\.sh\ (WARNING|ERROR) ]] && severity=${BASH_REMATCH[1]}
    if [[ $line == 'Script "startup-script" failed'* || $line =~ ^startup-script\ exit\ status\ [1-9][0-9]*$ ]]; then
      severity=ERROR failed=0 # the runner's word (Debian's 20211116 says `exit status N`)
      if [[ ! -s $WORK_DIR/console-error && $line == Script* ]]; then
        printf 'the startup script %s' "${line#*\" }" >"$WORK_DIR/console-error"
      elif [[ ! -s $WORK_DIR/console-error ]]; then
        printf 'the startup script failed with error: exit status %s' "${line##* }" >"$WORK_DIR/console-error"
      fi
    elif [[ $severity == ERROR ]]; then
      reason=${line#startup.sh ERROR}
      printf '%s' "${reason#"${reason%%[! ]*}"}" >"$WORK_DIR/console-error"
    fi
    log "$severity" "[vm${stamp:+ $stamp}] $line"
  done < <(head -n "$n" "$WORK_DIR/serial.txt" | startup_lines | this_boot_lines)
  SERIAL_NEXT=$next
  printf '%s' "$next" >"$WORK_DIR/serial-next"
  return "$failed"
}

# console_text: the `contents` of the serialPort answer on stdin (on one line), JSON-decoded.
console_text() {
  grep -oE '"contents":[[:space:]]*"([^"\\]|\\.)*"' | head -n 1 |
    sed -E -e 's/^"contents":[[:space:]]*"//' -e 's/"$//' -e 's/\\\\/\x01/g' -e 's/\\n/\n/g' \
      -e 's/\\"/"/g' -e 's/\\t/\t/g' -e 's/\\r//g' -e 's/\\\//\//g' \
      -e 's/\\u003[cC]/</g' -e 's/\\u003[eE]/>/g' -e 's/\\u0026/\&/g' -e "s/\\\\u0027/'/g" \
      -e 's/\\u003[dD]/=/g' -e 's/\\u00[01][0-9a-fA-F]//g' -e 's/\\u007[fF]//g' -e 's/\x01/\\/g' |
    head -c -1 # grep's newline after the match
}

# this_boot_lines: of the startup script's lines on stdin, this boot's, each once, as
# `HH:MM:SS<US>line` (startup.sh's own time on the VM, in this log's time zone: the relay lags by
# up to 3 s) or `<US>line`. Compute Engine serves the console only while the VM runs, and may
# keep the earlier boots' output across a stop: so this boot begins at the first line startup.sh
# stamped (UTC, `2026-12-02T06:00:00Z startup.sh …`) at or after a second before the start
# (CONSOLE_SINCE), and no earlier line, a failure line least of all, is taken for this boot's.
# The older runner from 20240802 puts each line on the console twice (its own copy, then the
# journal's through syslog): a line the same as one of the last 64 relayed is that copy.
this_boot_lines() {
  awk -v since="$CONSOLE_SINCE" -v zone="$(printf '%(%z)T' -1)" -v dir="$WORK_DIR" '
    function remember(l) {
      window[++last] = l; seen[l]++
      if (last - first > 64) { if (--seen[window[++first]] == 0) delete seen[window[first]]; delete window[first] }
    }
    BEGIN {
      open = (getline l < (dir "/console-open")) >= 0; close(dir "/console-open")
      first = last = 0
      while ((getline l < (dir "/console-seen")) > 0) remember(l)
      close(dir "/console-seen")
      shift = (substr(zone, 2, 2) * 3600 + substr(zone, 4, 2) * 60) * (substr(zone, 1, 1) == "-" ? -1 : 1)
      stamped = "^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z "
    }
    {
      is_stamped = $0 ~ stamped
      if (!open) {
        if (!is_stamped || substr($0, 1, 20) < since) next
        open = 1; printf "" > (dir "/console-open")
      }
      if ($0 in seen) next
      remember($0)
      if (is_stamped) {
        t = (substr($0, 12, 2) * 3600 + substr($0, 15, 2) * 60 + substr($0, 18, 2) + shift + 86400) % 86400
        printf "%02d:%02d:%02d\037%s\n", int(t / 3600), int(t % 3600 / 60), t % 60, substr($0, 22)
      } else printf "\037%s\n", $0
    }
    END {
      printf "" > (dir "/console-seen")
      for (i = first + 1; i <= last; i++) print window[i] > (dir "/console-seen")
    }'
}

# startup_lines: of the console's lines, the startup script's, without the runner's prefix;
# and the runner's line that says it failed.
startup_lines() {
  sed -n -E \
    -e '/Script "startup-script" failed with error: /{s/.*(Script "startup-script" failed with error: )/\1/p;d;}' \
    -e '/startup-script exit status [0-9]+$/{s/.*(startup-script exit status [0-9]+)$/\1/p;d;}' \
    -e 's/Metadata key\("startup-script"\), command\("[^"]*"\): /\x02/' -e 't strip' \
    -e 's/startup-script: /\x02/' -e 't strip' -e 'd' \
    -e ':strip' -e 's/^[^\x02]*\x02//p'
}

# relay_rest: once the watcher is stopped, what the VM's console got since its last read.
relay_rest() {
  [[ -s $WORK_DIR/serial-next ]] || return 0
  SERIAL_NEXT=$(<"$WORK_DIR/serial-next")
  relay_console || true
}

# console_from_start: this boot's console is read from its first byte (Compute Engine serves it
# only while the VM runs, so where it ended before the start cannot be read then), and only
# startup.sh's lines stamped from a second before now on are this boot's (this_boot_lines).
console_from_start() {
  SERIAL_NEXT=0
  CONSOLE_SINCE=$(stamp_in UTC0 '%Y-%m-%dT%H:%M:%SZ' "$((EPOCHSECONDS - 1))")
  printf '%s' "$SERIAL_NEXT" >"$WORK_DIR/serial-next"
  rm -f "$WORK_DIR/console-open" "$WORK_DIR/console-seen" "$WORK_DIR/serial.partial"
}

# console_refused: true when the last console read was refused (HTTP 403): the boot's lines
# cannot be in this log, so say so once, loudly, and read the console no more.
console_refused() {
  [[ $API_CODE == 403 ]] || return 1
  if [[ ! -e $WORK_DIR/console-refused ]]; then
    : >"$WORK_DIR/console-refused"
    log WARNING "the VM's boot will not be in this log: reading $INSTANCE's serial console was refused ($(api_message)). Grant the job's service account compute.instances.getSerialPortOutput (docs/deploy.md, step 4)"
  fi
}

# this_boots_state: true when the boot state read (BOOT_READ) is this boot's: its boot id is at or
# after the VM's last start; without an id (an older startup.sh), once this boot has shown
# progress (then an earlier boot's `failed:` is not taken for this one's).
this_boots_state() {
  if [[ -n $BOOT_READ_ID && -n $LAST_START_ID ]]; then
    [[ ! $BOOT_READ_ID < $LAST_START_ID ]]
  else
    [[ -f $WORK_DIR/boot-progress ]]
  fi
}

# read_attributes: one read of the VM's vm-job-agent/ guest attributes (GET
# instances/NAME/getGuestAttributes?queryPath=vm-job-agent/, at the endpoint gcloud uses); true
# when there are any, with the pin in PIN_READ, the boot's state in BOOT_READ and the boot it
# names in BOOT_READ_ID ("" if absent).
read_attributes() {
  local pin_re='"key":[[:space:]]*"tls-pin",[[:space:]]*"value":[[:space:]]*"(sha256//[A-Za-z0-9+/]{43}=)"'
  local boot_re='"key":[[:space:]]*"boot",[[:space:]]*"value":[[:space:]]*"(([^"\\]|\\.)*)"'
  local id_re='^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z) (.*)$'
  PIN_READ="" BOOT_READ="" BOOT_READ_ID=""
  compute_api GET "zones/$ZONE/instances/$INSTANCE/getGuestAttributes?queryPath=$GUEST_NAMESPACE/"
  if ! api_outcome; then
    printf '%s\n' "$API_ERROR" >"$WORK_DIR/pin.err"
    return 1
  fi
  [[ $API_BODY =~ $pin_re ]] && PIN_READ=${BASH_REMATCH[1]}
  [[ $API_BODY =~ $boot_re ]] && BOOT_READ=${BASH_REMATCH[1]//\\\"/\"}
  if [[ $BOOT_READ =~ $id_re ]]; then
    BOOT_READ_ID=${BASH_REMATCH[1]} BOOT_READ=${BASH_REMATCH[2]}
  fi
  [[ -n $PIN_READ ]] || printf 'no %s among the guest attributes\n' "$PIN_ATTRIBUTE" >"$WORK_DIR/pin.err"
  return 0
}

pin_error() {
  local err=""
  [[ -f $WORK_DIR/pin.err ]] && err=$(grep -v '^[[:space:]]*$' "$WORK_DIR/pin.err" | tr '\n' ' ' | cut -c1-300)
  printf '%s' "${err:-none}"
}
