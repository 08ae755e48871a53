"""The emulator's configuration: a TOML file (docs/emulator.md, "Configuration") or the defaults.

Every key is checked: an unknown key, a wrong type or a bad value is a ConfigError whose
message names the key, and the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcp_emulator.compute.capacity import MACHINE_TYPE

NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
PERMISSION_RE = re.compile(r"[a-z]+\.[a-zA-Z]+\.[a-zA-Z]+")
SERVICE_RE = re.compile(r"[a-z][a-z0-9-]*\.googleapis\.com")
SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
INSTANCE_TIMINGS = {
    # seconds; what a real VM spends in each step, shortened
    "provision_delay": 0.05,  # start: TERMINATED -> PROVISIONING -> STAGING
    "staging_delay": 0.05,  # STAGING -> RUNNING (the start operation is DONE here)
    "boot_delay": 0.0,  # RUNNING -> the startup script starts (the guest OS boots)
    "stop_delay": 0.05,  # guest gone -> TERMINATED
    "shutdown_grace": 5.0,  # SIGTERM to the guest -> SIGKILL (a real VM allows 90 s)
}
STATUSES = ("TERMINATED", "RUNNING")
# guests/process.py: the runner's format
RUNNERS = ("guest-agent", "legacy", "debian-20211116", "legacy-20240802")
CONSOLE_AFTER_STOP = ("kept", "cleared")
GUESTS = ("process", "qemu")  # guests/process.py (the default), guests/qemu.py (a real VM)
LABEL_CONFLICTS = ("http", "operation")  # how setLabels refuses a stale fingerprint
COMMAND_RE = re.compile(r"[A-Za-z0-9_.+-]+")


class ConfigError(Exception):
    """A bad configuration; the message is one line naming the key."""


@dataclass
class InstanceConfig:
    name: str
    zone: str
    status: str = "TERMINATED"
    metadata: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    network_ip: str | None = None
    script_runner: str = "guest-agent"  # or "legacy", "debian-20211116", … (RUNNERS)
    guest: str = "process"  # what runs inside: a process group here, or "qemu": a real VM
    # the serial console's buffer at a start after a stop: "kept" (earlier boots' output stays)
    # or "cleared" (no public source settles which Compute Engine does)
    console_after_stop: str = "kept"
    machine_type: str = "e2-small"
    # scheduling.maxRunDuration in seconds, with instanceTerminationAction=STOP (0: none)
    max_run_duration: int = 0
    missing_commands: list[str] = field(default_factory=list)  # not in the guest's image
    provision_delay: float = INSTANCE_TIMINGS["provision_delay"]
    staging_delay: float = INSTANCE_TIMINGS["staging_delay"]
    boot_delay: float = INSTANCE_TIMINGS["boot_delay"]
    stop_delay: float = INSTANCE_TIMINGS["stop_delay"]
    shutdown_grace: float = INSTANCE_TIMINGS["shutdown_grace"]


@dataclass
class AddressConfig:
    name: str
    region: str
    address: str


@dataclass
class SecretConfig:
    name: str
    versions: list[bytes]


@dataclass
class EmulatorConfig:
    project: str = "demo-project"
    project_number: int = 123456789012
    region: str = "us-central1"
    zone: str = "us-central1-a"
    operation_wait_cap: float = 120.0  # Google holds a wait about two minutes
    label_conflict: str = "http"  # a stale labelFingerprint: HTTP 412, or "operation" error
    # the caller's Compute permissions (IAM enforced), or None: any token may do anything
    permissions: frozenset[str] | None = None
    # the APIs enabled in the project (a new project: []), or None: every API the emulator
    # answers is enabled
    services: list[str] | None = None
    guest: str = "process"  # every instance's guest unless it names its own (GUESTS)
    # Cloud Scheduler's clock: "real" (a fire time that passes fires) or "test" (only what a
    # test asks through /_emulator/scheduler/fire fires)
    scheduler_clock: str = "real"
    # what every VM made through instances.insert has in its guest's environment, as a VM
    # image has its own settings (where uv is; for our startup.sh, APP_DIR and TLS_DIR, which
    # it takes before the metadata's: a process guest runs on this host, not on a disk of its own)
    guest_env: dict[str, str] = field(default_factory=dict)
    instances: list[InstanceConfig] = field(default_factory=list)
    addresses: list[AddressConfig] = field(default_factory=list)
    secrets: list[SecretConfig] = field(default_factory=list)


def default_config() -> EmulatorConfig:
    """One stopped VM and one static address: enough to try the CLI without a file."""
    cfg = EmulatorConfig()
    cfg.instances.append(InstanceConfig(name="vm-1", zone=cfg.zone))
    cfg.addresses.append(AddressConfig(name="static-ip-1", region=cfg.region, address="127.0.0.2"))
    return cfg


# -- checking --------------------------------------------------------------------------------


def _take(
    table: dict[str, Any],
    where: str,
    key: str,
    kind: type | tuple[type, ...],
    default: Any = None,
    required: bool = False,
) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"{where}{key} is required")
        return default
    value = table.pop(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}{key}: expected {names}, got {value!r}")
    return value


def _no_more(table: dict[str, Any], where: str) -> None:
    if table:
        raise ConfigError(f"{where}{sorted(table)[0]}: unknown key")


def _name(value: str, where: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    if not pattern.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is not a valid resource name")
    return value


def _str_map(value: dict[str, Any], where: str) -> dict[str, str]:
    for k, v in value.items():
        if not isinstance(v, str):
            raise ConfigError(f"{where}.{k}: expected str, got {v!r}")
    return dict(value)


def _loopback(value: str, where: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IP address") from None
    if not ip.is_loopback or ip.version != 4:
        raise ConfigError(f"{where}: {value} must be an IPv4 loopback address (127.x.y.z)")
    return value


def _instance(
    raw: Any, i: int, cfg: EmulatorConfig, defaults: dict[str, float], base: Path
) -> InstanceConfig:
    where = f"instances[{i}]."
    if not isinstance(raw, dict):
        raise ConfigError(f"instances[{i}]: expected a table")
    t = dict(raw)
    inst = InstanceConfig(
        name=_name(_take(t, where, "name", str, required=True), where + "name"),
        zone=_name(_take(t, where, "zone", str, cfg.zone), where + "zone"),
    )
    inst.status = _take(t, where, "status", str, "TERMINATED")
    if inst.status not in STATUSES:
        raise ConfigError(f"{where}status: must be one of {', '.join(STATUSES)}")
    inst.metadata = _str_map(_take(t, where, "metadata", dict, {}), where + "metadata")
    for key, rel in _str_map(
        _take(t, where, "metadata_from_file", dict, {}), where + "metadata_from_file"
    ).items():
        path = base / rel
        try:
            inst.metadata[key] = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"{where}metadata_from_file.{key}: cannot read {path}: {exc.strerror}"
            ) from None
    inst.env = _str_map(_take(t, where, "env", dict, {}), where + "env")
    workdir = _take(t, where, "workdir", str)
    inst.workdir = (base / workdir).resolve() if workdir else None
    ip = _take(t, where, "network_ip", str)
    inst.network_ip = _loopback(ip, where + "network_ip") if ip else None
    inst.script_runner = _take(t, where, "script_runner", str, inst.script_runner)
    if inst.script_runner not in RUNNERS:
        raise ConfigError(f"{where}script_runner: must be one of {', '.join(RUNNERS)}")
    inst.guest = _take(t, where, "guest", str, cfg.guest)
    if inst.guest not in GUESTS:
        raise ConfigError(f"{where}guest: must be one of {', '.join(GUESTS)}")
    inst.machine_type = _take(t, where, "machine_type", str, inst.machine_type)
    if not MACHINE_TYPE.fullmatch(inst.machine_type):
        raise ConfigError(f"{where}machine_type: not a machine type: {inst.machine_type!r}")
    inst.max_run_duration = _take(t, where, "max_run_duration", int, 0)
    if inst.max_run_duration < 0:
        raise ConfigError(f"{where}max_run_duration: must be >= 0 seconds")
    inst.console_after_stop = _take(t, where, "console_after_stop", str, "kept")
    if inst.console_after_stop not in CONSOLE_AFTER_STOP:
        raise ConfigError(f"{where}console_after_stop: must be kept or cleared")
    missing = _take(t, where, "missing_commands", list, [])
    if not all(isinstance(m, str) and COMMAND_RE.fullmatch(m) for m in missing):
        raise ConfigError(f"{where}missing_commands: expected command names, got {missing!r}")
    inst.missing_commands = list(missing)
    for key in INSTANCE_TIMINGS:
        value = _take(t, where, key, float, defaults[key])
        if value < 0:
            raise ConfigError(f"{where}{key}: must be >= 0, got {value}")
        setattr(inst, key, value)
    _no_more(t, where)
    return inst


def parse_config(data: dict[str, Any], base: Path) -> EmulatorConfig:
    """Check a parsed TOML document; relative paths in it are taken from base."""
    t = dict(data)
    cfg = EmulatorConfig()
    cfg.project = _take(t, "", "project", str, cfg.project)
    cfg.project_number = _take(t, "", "project_number", int, cfg.project_number)
    cfg.region = _name(_take(t, "", "region", str, cfg.region), "region")
    cfg.zone = _name(_take(t, "", "zone", str, cfg.zone), "zone")
    cfg.operation_wait_cap = _take(t, "", "operation_wait_cap", float, cfg.operation_wait_cap)
    if cfg.operation_wait_cap <= 0:
        raise ConfigError("operation_wait_cap: must be > 0")
    cfg.label_conflict = _take(t, "", "label_conflict", str, cfg.label_conflict)
    if cfg.label_conflict not in LABEL_CONFLICTS:
        raise ConfigError(f"label_conflict: must be one of {', '.join(LABEL_CONFLICTS)}")
    cfg.guest = _take(t, "", "guest", str, cfg.guest)
    if cfg.guest not in GUESTS:
        raise ConfigError(f"guest: must be one of {', '.join(GUESTS)}")
    cfg.scheduler_clock = _take(t, "", "scheduler_clock", str, cfg.scheduler_clock)
    if cfg.scheduler_clock not in ("real", "test"):
        raise ConfigError("scheduler_clock: must be real or test")
    permissions = _take(t, "", "permissions", list, None)
    if permissions is not None:
        for p in permissions:
            if not isinstance(p, str) or not PERMISSION_RE.fullmatch(p):
                raise ConfigError(
                    f"permissions: {p!r} is not a permission like compute.instances.get"
                )
        cfg.permissions = frozenset(permissions)
    cfg.guest_env = _str_map(_take(t, "", "guest_env", dict, {}), "guest_env")
    services = _take(t, "", "services", list, None)
    if services is not None:
        for name in services:
            if not isinstance(name, str) or not SERVICE_RE.fullmatch(name):
                raise ConfigError(
                    f"services: {name!r} is not a service like compute.googleapis.com"
                )
        cfg.services = list(services)

    raw_defaults = dict(_take(t, "", "defaults", dict, {}))
    defaults = {
        k: _take(raw_defaults, "defaults.", k, float, v) for k, v in INSTANCE_TIMINGS.items()
    }
    _no_more(raw_defaults, "defaults.")

    for i, raw in enumerate(_take(t, "", "instances", list, [])):
        cfg.instances.append(_instance(raw, i, cfg, defaults, base))

    for i, raw in enumerate(_take(t, "", "addresses", list, [])):
        where = f"addresses[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"addresses[{i}]: expected a table")
        a = dict(raw)
        cfg.addresses.append(
            AddressConfig(
                name=_name(_take(a, where, "name", str, required=True), where + "name"),
                region=_name(_take(a, where, "region", str, cfg.region), where + "region"),
                address=_loopback(
                    _take(a, where, "address", str, required=True), where + "address"
                ),
            )
        )
        _no_more(a, where)

    for i, raw in enumerate(_take(t, "", "secrets", list, [])):
        where = f"secrets[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"secrets[{i}]: expected a table")
        s = dict(raw)
        name = _name(_take(s, where, "name", str, required=True), where + "name", SECRET_NAME_RE)
        value = _take(s, where, "value", str)
        file = _take(s, where, "file", str)
        if (value is None) == (file is None):
            raise ConfigError(f"{where}: give exactly one of value or file")
        if file is not None:
            try:
                data_bytes = (base / file).read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{where}file: cannot read {base / file}: {exc.strerror}"
                ) from None
        else:
            data_bytes = value.encode()
        cfg.secrets.append(SecretConfig(name=name, versions=[data_bytes]))
        _no_more(s, where)

    _no_more(t, "")
    _unique([i.name for i in cfg.instances], "instances")
    _unique([a.name for a in cfg.addresses], "addresses")
    _unique([a.address for a in cfg.addresses], "addresses' address")
    _unique([s.name for s in cfg.secrets], "secrets")
    return cfg


def _unique(names: list[str], what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{what}: {n!r} appears twice")
        seen.add(n)


def load_config(path: Path | None) -> EmulatorConfig:
    if path is None:
        return default_config()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path.resolve().parent)


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    return repr(value)


def dump_config(cfg: EmulatorConfig) -> str:
    """TOML that parse_config reads back as cfg (secrets must be UTF-8 text)."""
    lines = [
        f"{k} = {_toml_value(getattr(cfg, k))}"
        for k in (
            "project",
            "project_number",
            "region",
            "zone",
            "operation_wait_cap",
            "label_conflict",
            "guest",
            "scheduler_clock",
        )
    ]
    if cfg.guest_env:
        lines.append(f"guest_env = {_toml_value(cfg.guest_env)}")
    if cfg.permissions is not None:
        lines.append(f"permissions = {json.dumps(sorted(cfg.permissions))}")
    if cfg.services is not None:
        lines.append(f"services = {json.dumps(sorted(cfg.services))}")
    for inst in cfg.instances:
        lines += ["", "[[instances]]"]
        lines += [
            f"{k} = {_toml_value(getattr(inst, k))}"
            for k in ("name", "zone", "status", "metadata", "env", *INSTANCE_TIMINGS)
        ]
        if inst.workdir is not None:
            lines.append(f"workdir = {_toml_value(str(inst.workdir))}")
        if inst.network_ip is not None:
            lines.append(f"network_ip = {_toml_value(inst.network_ip)}")
        lines.append(f"script_runner = {_toml_value(inst.script_runner)}")
        lines.append(f"guest = {_toml_value(inst.guest)}")
        lines.append(f"console_after_stop = {_toml_value(inst.console_after_stop)}")
        lines.append(f"machine_type = {_toml_value(inst.machine_type)}")
        lines.append(f"max_run_duration = {inst.max_run_duration}")
        if inst.missing_commands:
            lines.append(f"missing_commands = {json.dumps(inst.missing_commands)}")
    for addr in cfg.addresses:
        lines += [
            "",
            "[[addresses]]",
            f"name = {_toml_value(addr.name)}",
            f"region = {_toml_value(addr.region)}",
            f"address = {_toml_value(addr.address)}",
        ]
    for secret in cfg.secrets:
        if len(secret.versions) != 1:
            raise ConfigError(
                f"secrets: {secret.name} has {len(secret.versions)} versions; "
                "a configuration holds one"
            )
        lines += [
            "",
            "[[secrets]]",
            f"name = {_toml_value(secret.name)}",
            f"value = {_toml_value(secret.versions[0].decode())}",
        ]
    return "\n".join(lines) + "\n"
