"""Compute Engine's state and behaviour: instances and their lifecycle, static addresses,
firewall rules, the default network, zone, region and global operations, the stockouts a test
sets (docs/google-cloud.md, "Instances").

start: TERMINATED -> PROVISIONING -> STAGING -> RUNNING (the operation is DONE here), then
after `boot_delay` the guest's startup script starts. stop: -> STOPPING, the guest shut down as
a VM's shutdown goes, -> TERMINATED (DONE). start on RUNNING and stop on TERMINATED are no-op
operations. insert makes an instance and starts it as start does (its operation is DONE at
RUNNING); delete stops a running one as stop does, then it is gone (DONE). Every status change
and guest event goes to the journal with the request log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcp_emulator.compute import catalog
from gcp_emulator.compute.capacity import MACHINE_TYPE, Stockout, refusal
from gcp_emulator.config import NAME_RE, AddressConfig, InstanceConfig
from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError, not_found
from gcp_emulator.core.util import fingerprint, now_rfc3339, same_fingerprint
from gcp_emulator.guests import qemu, vm_image
from gcp_emulator.guests.process import ProcessGuest
from gcp_emulator.guests.qemu import QemuGuest
from gcp_emulator.guests.serial_port import SerialPort
from gcp_emulator.metadata.tree import SCOPES as CONFIGURED_SCOPES

if TYPE_CHECKING:
    from gcp_emulator.config import EmulatorConfig
    from gcp_emulator.core.state import Cloud

logger = logging.getLogger(__name__)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default

# an operation's httpErrorMessage for its httpErrorStatusCode
HTTP_ERROR_MESSAGES = {403: "FORBIDDEN", 412: "PRECONDITION FAILED", 503: "SERVICE UNAVAILABLE"}
OPERATION_SECONDS = 0.05  # how long a quick operation (setLabels) stays RUNNING
MAX_LABELS = 64  # labels a resource may have (Compute Engine's documented limit)
MAX_TAGS = 64  # network tags an instance may have (documented)
NAME_PATTERN = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"  # as Compute's errors quote it
# the loopback ranges new resources take an address from (configured ones name their own;
# ephemeral external IPs are 127.0.200.x)
INTERNAL_IPS = "127.0.100.0/22"
STATIC_IPS = "127.0.150.0/23"
_ids = itertools.count(1000000000000000001)
# the fields of a firewall rule its insert and patch set
FIREWALL_FIELDS = (
    "description",
    "network",
    "priority",
    "direction",
    "allowed",
    "denied",
    "sourceRanges",
    "destinationRanges",
    "sourceTags",
    "targetTags",
    "sourceServiceAccounts",
    "targetServiceAccounts",
    "logConfig",
    "disabled",
)
Guest = ProcessGuest | QemuGuest


@dataclass
class Operation:
    name: str
    scope: str  # "zones/Z", "regions/R" or "global": where it is listed and waited on
    op_type: str
    target_path: str
    target_id: str
    status: str = "RUNNING"
    insert_time: str = field(default_factory=now_rfc3339)
    end_time: str | None = None
    error: ApiError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finish(self, error: ApiError | None = None) -> None:
        if self.status == "DONE":
            return
        self.status = "DONE"
        self.error = error
        self.end_time = now_rfc3339()
        self.done.set()


@dataclass
class Instance:
    cfg: InstanceConfig
    project: str
    id: str
    network_ip: str
    dir: Path
    serial: SerialPort
    status: str = "TERMINATED"
    metadata: dict[str, str] = field(default_factory=dict)
    metadata_fingerprint: str = field(default_factory=fingerprint)
    labels: dict[str, str] = field(default_factory=dict)
    label_fingerprint: str = field(default_factory=fingerprint)
    access_configs: list[dict[str, Any]] = field(default_factory=list)
    # what the guest published this boot: {"namespace/key": value}; cleared at every start
    guest_attributes: dict[str, str] = field(default_factory=dict)
    nic_fingerprint: str = field(default_factory=fingerprint)
    tags: list[str] = field(default_factory=list)
    tags_fingerprint: str = field(default_factory=fingerprint)
    disks: list[dict[str, Any]] = field(default_factory=list)  # attachedDisks as answered
    guest: Guest | None = None
    task: asyncio.Task[None] | None = None
    waiting: dict[str, list[Operation]] = field(default_factory=dict)
    created: str = field(default_factory=now_rfc3339)
    last_start: str | None = None
    last_stop: str | None = None
    machine_type: str = "e2-small"
    # scheduling set with setScheduling: maxRunDuration {"seconds"}, instanceTerminationAction
    scheduling: dict[str, Any] = field(default_factory=dict)
    running_since: int = 0  # counts the entries to RUNNING (the run-duration limit's timer)
    # the service account it runs as (email, scopes) when it was created with one (or given
    # one by setServiceAccount); None: the project's default compute account (a configured
    # VM's, or "default")
    account: tuple[str, list[str]] | None = None
    has_account: bool = True  # False: created with --no-service-account
    # the scopes of the default account (account None) when insert or setServiceAccount gave
    # them; None: a configured VM's (cloud-platform)
    default_scopes: list[str] | None = None
    # False for one made through instances.insert: its default account is the default compute
    # account, whose token is that account's (a configured VM's is the operator's)
    from_config: bool = True
    deleting: bool = False  # instances.delete: gone once TERMINATED

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def zone(self) -> str:
        return self.cfg.zone

    @property
    def path(self) -> str:
        return f"projects/{self.project}/zones/{self.zone}/instances/{self.name}"

    @property
    def workdir(self) -> Path:
        return self.cfg.workdir or self.dir / "disk"

    def external_ip(self) -> str | None:
        return self.access_configs[0].get("natIP") if self.access_configs else None

    def guest_attributes_enabled(self) -> bool:
        """The instance's `enable-guest-attributes` metadata (this emulator has no project
        metadata to fall back on)."""
        return self.metadata.get("enable-guest-attributes", "").strip().lower() == "true"


@dataclass
class Address:
    cfg: AddressConfig
    project: str
    id: str
    users: list[str] = field(default_factory=list)
    created: str = field(default_factory=now_rfc3339)

    @property
    def path(self) -> str:
        return f"projects/{self.project}/regions/{self.cfg.region}/addresses/{self.cfg.name}"


@dataclass
class Firewall:
    """A VPC firewall rule of the default network. Stored and answered as Compute Engine does
    (priority 1000, logging off, a source of 0.0.0.0/0 when an ingress rule names none), but
    the emulator filters no traffic by it: a guest's port is reached on its loopback address
    whatever the rules say."""

    name: str
    project: str
    id: str
    fields: dict[str, Any]  # the rule's own fields (allowed, direction, sourceRanges, ...)
    created: str = field(default_factory=now_rfc3339)

    @property
    def path(self) -> str:
        return f"projects/{self.project}/global/firewalls/{self.name}"


class Compute:
    """Compute Engine's backend: one method per API call, and the lifecycle behind them."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.operations: dict[tuple[str, str], Operation] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.addresses: dict[tuple[str, str], Address] = {}
        self.firewalls: dict[str, Firewall] = {}
        self.stockouts: list[Stockout] = []
        self._ephemeral = (f"127.0.200.{n}" for n in itertools.count(1))
        self.created = now_rfc3339()  # the project's: its default network and subnets
        self.network_id = str(next(_ids))
        self.subnet_ids = {region: str(next(_ids)) for region in catalog.SUBNET_RANGES}
        for n, ic in enumerate(self.cfg.instances, start=2):
            inst = self.add_instance(ic, ic.network_ip or f"127.0.100.{n}")
            boot = {"boot": True, "autoDelete": True}  # a stock VM's disk: Debian 12, 10 GB
            inst.disks = [self.attached_disk(inst, boot, catalog.DEFAULT_IMAGE, 0)]
        for ac in self.cfg.addresses:
            self.addresses[(ac.region, ac.name)] = Address(ac, self.project, str(next(_ids)))

    @property
    def cfg(self) -> EmulatorConfig:
        return self.cloud.cfg

    @property
    def project(self) -> str:
        return self.cloud.project

    def record(self, kind: str, **fields: Any) -> None:
        self.cloud.record(kind, **fields)

    # -- bookkeeping -----------------------------------------------------------------------

    def link(self, path: str) -> str:
        return f"{self.cloud.base_url}/compute/v1/{path}"

    def add_instance(self, ic: InstanceConfig, network_ip: str) -> Instance:
        inst_dir = self.cloud.state_root / "instances" / ic.zone / ic.name
        inst_dir.mkdir(parents=True, exist_ok=True)
        inst = Instance(
            cfg=ic,
            project=self.project,
            id=str(next(_ids)),
            network_ip=network_ip,
            dir=inst_dir,
            serial=SerialPort(inst_dir / "serial-port-1.log"),
            metadata=dict(ic.metadata),
            machine_type=ic.machine_type,
        )
        if ic.max_run_duration:
            inst.scheduling = {
                "maxRunDuration": {"seconds": str(ic.max_run_duration)},
                "instanceTerminationAction": "STOP",
            }
        self.instances[(ic.zone, ic.name)] = inst
        return inst

    def boot_configured(self) -> None:
        """At start-up: instances the configuration declares RUNNING boot their guest now."""
        for inst in self.instances.values():
            if inst.cfg.status == "RUNNING":
                self.force_state(inst, "RUNNING")

    def instance(self, project: str, zone: str, name: str) -> Instance:
        inst = self.instances.get((zone, name)) if project == self.project else None
        if inst is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def address(self, project: str, region: str, name: str) -> Address:
        addr = self.addresses.get((region, name)) if project == self.project else None
        if addr is None:
            raise not_found(f"projects/{project}/regions/{region}/addresses/{name}")
        return addr

    def operation(self, project: str, scope: str, name: str) -> Operation:
        """An operation by its scope ("zones/Z", "regions/R" or "global") and name."""
        op = self.operations.get((scope, name)) if project == self.project else None
        if op is None:
            raise not_found(f"projects/{project}/{scope}/operations/{name}")
        return op

    def new_operation(self, inst: Instance, op_type: str) -> Operation:
        return self.scoped_operation(f"zones/{inst.zone}", op_type, inst.path, inst.id)

    def scoped_operation(
        self,
        scope: str,
        op_type: str,
        target_path: str,
        target_id: str,
        finish_after: float | None = None,
    ) -> Operation:
        """A new operation in scope on target; with finish_after, DONE that many seconds later
        (callers follow it with wait, as they follow Compute's)."""
        name = f"operation-{int(time.time() * 1000)}-{os.urandom(7).hex()[:13]}"
        op = Operation(
            name=name, scope=scope, op_type=op_type, target_path=target_path, target_id=target_id
        )
        self.operations[(scope, name)] = op
        if finish_after is not None:
            asyncio.get_running_loop().call_later(finish_after, op.finish)
        return op

    def done_operation(
        self, inst: Instance, op_type: str, error: ApiError | None = None
    ) -> Operation:
        op = self.new_operation(inst, op_type)
        op.finish(error)
        return op

    def set_status(self, inst: Instance, status: str) -> None:
        entered_running = status == "RUNNING" and inst.status != "REPAIRING"
        inst.status = status
        if entered_running:
            self._arm_run_limit(inst)
        self.record("event", event="status", instance=f"{inst.zone}/{inst.name}", status=status)
        logger.info("%s/%s: %s", inst.zone, inst.name, status)
        for op in inst.waiting.pop(status, []):
            op.finish()
        if status == "TERMINATED" and inst.deleting:
            self._remove(inst)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, inst: Instance) -> Operation:
        if inst.status == "RUNNING":
            return self.done_operation(inst, "start")
        if inst.status in ("STOPPING", "SUSPENDING") or inst.deleting:
            raise ApiError(400, "resourceNotReady", f"The resource '{inst.path}' is not ready")
        op = self.new_operation(inst, "start")
        self._power_on(inst, op)
        return op

    def _power_on(self, inst: Instance, op: Operation) -> None:
        """What start does to a VM: op is DONE at RUNNING (or ends with the zone's refusal)."""
        inst.waiting.setdefault("RUNNING", []).append(op)
        if inst.status == "TERMINATED":
            refused = next(
                (s for s in self.stockouts if s.refuses(inst.zone, inst.machine_type)), None
            )
            if refused is not None:
                self.set_status(inst, "PROVISIONING")
                inst.task = asyncio.get_running_loop().create_task(self._refuse(inst, refused))
                return
            inst.last_start = now_rfc3339()
            inst.guest_attributes.clear()
            if inst.cfg.console_after_stop == "cleared":
                inst.serial.clear()
            self.set_status(inst, "PROVISIONING")
            inst.task = asyncio.get_running_loop().create_task(self._boot(inst))

    async def _refuse(self, inst: Instance, stockout: Stockout) -> None:
        """A start the zone has no capacity (or the project no quota) for: PROVISIONING, then
        back to TERMINATED, the operation ending with the error."""
        await asyncio.sleep(inst.cfg.provision_delay)
        status, message = refusal(stockout.code, self.project, inst.zone, self.cfg.region)
        self.record(
            "event", event="stockout", instance=f"{inst.zone}/{inst.name}", code=stockout.code
        )
        inserting = [op for op in inst.waiting.get("RUNNING", []) if op.op_type == "insert"]
        self.set_status(inst, "TERMINATED")
        for op in inst.waiting.pop("RUNNING", []):
            op.finish(ApiError(status, stockout.code, message))
        if inserting and self.instances.get((inst.zone, inst.name)) is inst:
            # an insert the zone refused makes no instance, and holds no address
            for ac in inst.access_configs:
                address = self.address_by_ip(ac.get("natIP", ""))
                if address is not None:
                    address.users = []
            del self.instances[(inst.zone, inst.name)]

    def set_machine_type(self, inst: Instance, body: dict[str, Any]) -> Operation:
        """instances.setMachineType: on a stopped VM only."""
        wanted = str(body.get("machineType") or "").rsplit("/", 1)[-1]
        if not MACHINE_TYPE.fullmatch(wanted):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'. "
                f"Machine type with name '{wanted}' does not exist in zone '{inst.zone}'.",
            )
        if inst.status != "TERMINATED":
            raise ApiError(
                400,
                "resourceNotReady",
                f"The resource '{inst.path}' is not ready",
            )
        inst.machine_type = wanted
        return self.done_operation(inst, "setMachineType")

    def set_scheduling(self, inst: Instance, body: dict[str, Any]) -> Operation:
        """instances.setScheduling: on a stopped VM only (documented); the fields given replace
        those set, a null clears one."""
        if inst.status != "TERMINATED":
            raise ApiError(400, "resourceNotReady", f"The resource '{inst.path}' is not ready")
        for key, value in body.items():
            if value is None:
                inst.scheduling.pop(key, None)
            else:
                inst.scheduling[key] = value
        return self.done_operation(inst, "setScheduling")

    def run_limit(self, inst: Instance) -> float | None:
        """The seconds a VM may stay RUNNING before Compute Engine stops it, or None."""
        limit = inst.scheduling.get("maxRunDuration")
        if not isinstance(limit, dict) or inst.scheduling.get("instanceTerminationAction") not in (
            "STOP",
            "DELETE",
        ):
            return None
        return float(limit.get("seconds", 0)) + float(limit.get("nanos", 0)) / 1e9

    def _arm_run_limit(self, inst: Instance) -> None:
        """maxRunDuration's timer, started at each entry to RUNNING: when it passes, the VM is
        stopped as a stop through the API stops it, or deleted as delete does when its
        instanceTerminationAction is DELETE."""
        inst.running_since += 1
        limit = self.run_limit(inst)
        if limit is None:
            return
        entry = inst.running_since

        def expire() -> None:
            if inst.running_since == entry and inst.status in ("RUNNING", "REPAIRING"):
                self.record("event", event="max_run_duration", instance=f"{inst.zone}/{inst.name}")
                if inst.scheduling.get("instanceTerminationAction") == "DELETE":
                    self.delete_instance(inst)
                else:
                    self._begin_stop(inst)

        asyncio.get_running_loop().call_later(limit, expire)

    async def _boot(self, inst: Instance, skip_delays: bool = False) -> None:
        if not skip_delays:
            await asyncio.sleep(inst.cfg.provision_delay)
            self.set_status(inst, "STAGING")
            await asyncio.sleep(inst.cfg.staging_delay)
        self.set_status(inst, "RUNNING")
        await asyncio.sleep(inst.cfg.boot_delay)
        inst.guest = await self._new_guest(inst)
        script = inst.metadata.get("startup-script")
        await inst.guest.boot(script)
        self.record(
            "event",
            event="guest_start",
            instance=f"{inst.zone}/{inst.name}",
            pid=inst.guest.proc.pid if inst.guest.proc else None,
        )

    async def _new_guest(self, inst: Instance) -> Guest:
        if inst.cfg.guest == "qemu":
            image = await asyncio.to_thread(vm_image.build)
            port = inst.metadata.get("agent-port", "8000")
            return QemuGuest(
                f"{inst.zone}/{inst.name}",
                inst.serial,
                inst.dir,
                image,
                emulator_port=int(self.cloud.base_url.rsplit(":", 1)[1]),
                zone=inst.zone,
                instance=inst.name,
                forwards=[(inst.external_ip() or inst.network_ip, int(port))],
                on_exit=lambda: self.power_off_from_guest(inst),
            )
        return ProcessGuest(
            f"{inst.zone}/{inst.name}",
            inst.serial,
            inst.workdir,
            inst.dir,
            self.guest_env(inst),
            inst.cfg.script_runner,
            wrap=self.cloud.command,  # nsenter keeps the pid: the group is the script's
        )

    def stop(self, inst: Instance) -> Operation:
        if inst.status == "TERMINATED":
            return self.done_operation(inst, "stop")
        op = self.new_operation(inst, "stop")
        inst.waiting.setdefault("TERMINATED", []).append(op)
        if inst.status != "STOPPING":
            self._begin_stop(inst)
        return op

    def _begin_stop(self, inst: Instance, preempted: bool = False) -> None:
        booting = inst.task
        self.set_status(inst, "STOPPING")
        inst.task = asyncio.get_running_loop().create_task(self._shutdown(inst, booting, preempted))

    async def _shutdown(
        self, inst: Instance, booting: asyncio.Task[None] | None, preempted: bool = False
    ) -> None:
        if booting is not None and not booting.done():
            booting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await booting
        if inst.guest is not None:
            # a real VM gets what Compute Engine gives a guest (90 s, 30 s when it is
            # preempted); the process guest its shutdown_grace
            grace = inst.cfg.shutdown_grace
            if isinstance(inst.guest, QemuGuest):
                grace = qemu.PREEMPT_GRACE if preempted else qemu.GRACE
            await inst.guest.shutdown(grace)
            self.record("event", event="guest_stop", instance=f"{inst.zone}/{inst.name}")
            inst.guest = None
        await asyncio.sleep(inst.cfg.stop_delay)
        inst.last_stop = now_rfc3339()
        self.set_status(inst, "TERMINATED")
        for op in inst.waiting.pop("RUNNING", []):  # a start that a stop overtook
            op.finish()

    def power_off_from_guest(self, inst: Instance) -> None:
        """The guest ran `poweroff`: the VM stops as if asked through the API."""
        self.record("event", event="guest_poweroff", instance=f"{inst.zone}/{inst.name}")
        if inst.status not in ("STOPPING", "TERMINATED"):
            self._begin_stop(inst)

    def force_state(self, inst: Instance, status: str) -> None:
        """Test hook: put a VM straight into RUNNING (guest booted at once) or TERMINATED; or a
        RUNNING one into REPAIRING (Compute Engine repairing its host: the status alone, the guest
        goes on) and back to RUNNING."""
        if status == inst.status:
            return
        if (status, inst.status) in (("REPAIRING", "RUNNING"), ("RUNNING", "REPAIRING")):
            self.set_status(inst, status)
            return
        if status == "RUNNING" and inst.status == "STOPPING":
            # a repair that ends after a stop began does not bring the VM back; booting here
            # would leave a guest running under a TERMINATED status once the stop ends
            raise ApiError(409, "conflict", f"{inst.name} is STOPPING, not brought to RUNNING")
        if status == "RUNNING":
            inst.last_start = now_rfc3339()
            inst.guest_attributes.clear()
            if inst.cfg.console_after_stop == "cleared":
                inst.serial.clear()
            inst.task = asyncio.get_running_loop().create_task(self._boot(inst, skip_delays=True))
        elif status == "TERMINATED":
            self._begin_stop(inst)
        else:
            raise ApiError(
                400, "invalid", f"status must be RUNNING, TERMINATED or REPAIRING, not {status}"
            )

    def preempt(self, inst: Instance) -> None:
        """Test hook: Compute Engine takes a RUNNING Spot VM back: an operation of type
        compute.instances.preempted, then ACPI soft-off with a shorter grace than a stop's
        (the process guest: SIGTERM, SIGKILL after shutdown_grace; a real VM: the power
        button, a hard stop after 30 s); TERMINATED."""
        if inst.status != "RUNNING":
            raise ApiError(400, "invalid", f"only a RUNNING VM is preempted, not {inst.status}")
        self.done_operation(inst, "compute.instances.preempted")
        self.record("event", event="preempted", instance=f"{inst.zone}/{inst.name}")
        self._begin_stop(inst, preempted=True)

    async def close(self) -> None:
        """Stop every guest (the emulator is exiting)."""
        for inst in self.instances.values():
            if inst.task is not None and not inst.task.done():
                inst.task.cancel()
            if inst.guest is not None:
                await inst.guest.shutdown(min(inst.cfg.shutdown_grace, 5))
                inst.guest = None

    def kill_all_now(self) -> None:
        for inst in self.instances.values():
            if inst.guest is not None:
                inst.guest.kill_now()

    def guest_env(self, inst: Instance) -> dict[str, str]:
        """What the startup script gets: what systemd gives a system unit (no HOME, no USER,
        systemd's default PATH, the locale), the machine's trust store and proxy and uv's
        settings (a VM image has its own), the gcloud overrides, the metadata server, and the
        instance's `env` on top."""
        keep = (
            "LANG",
            "LC_ALL",
            # the machine's trust store and proxy, as a VM image has its own
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "PIP_CERT",
            "GIT_SSL_CAINFO",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "no_proxy",
        )
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("UV_")}
        env["PATH"] = SYSTEMD_PATH
        env.update(clock.env())
        metadata_host = f"{self.cloud.base_url.removeprefix('http://')}/vm/{inst.zone}/{inst.name}"
        config_dir = inst.dir / "gcloud"
        config_dir.mkdir(exist_ok=True)
        env.update(self.cloud.gcloud_env(config_dir))
        env.update(
            {
                "GCE_METADATA_HOST": metadata_host,
                "GCE_METADATA_ROOT": metadata_host,
                "GCE_METADATA_IP": self.cloud.base_url.removeprefix("http://"),
                # The guest's stand-in for NAT: it listens on the address callers use.
                "AGENT_HOST": inst.external_ip() or inst.network_ip,
                "HOSTNAME": inst.name,
                # the serial console's device, as /dev/ttyS0 is on a VM: what a process writes
                # there lands in getSerialPortOutput as is, past the script runner
                "SERIAL_CONSOLE": str(inst.serial.path),
            }
        )
        env.update(inst.cfg.env)
        # The emulator's poweroff and apt-get come first, even when the instance's env sets its
        # own PATH; commands the image lacks (missing_commands) are left out of the rest.
        env["GCP_EMULATOR_HOST_PATH"] = env["PATH"]
        env["GCP_EMULATOR_APT_LOG"] = str(inst.dir / "apt-get.log")
        image = self.image_bin(inst, env["PATH"])
        if image is not None:
            env["GCP_EMULATOR_IMAGE_BIN"] = str(image)
        env["PATH"] = f"{self.cloud.bin_dir}{os.pathsep}{image or env['PATH']}"
        return env

    def image_bin(self, inst: Instance, path: str) -> Path | None:
        """For an instance told that commands are missing from its image: a directory of links
        to every command on path but those, made at its first boot on its disk (workdir) and
        kept there (what the emulator's apt-get installs stays, as on a disk)."""
        missing = set(inst.cfg.missing_commands)
        if not missing:
            return None
        image = inst.workdir / "image-bin"  # on the VM's disk: its users must reach it
        if image.is_dir():
            return image
        image.mkdir(parents=True)
        for directory in path.split(os.pathsep):
            try:
                entries = sorted(Path(directory).iterdir())
            except OSError:
                continue
            for entry in entries:
                link = image / entry.name
                if entry.name in missing or link.exists() or link.is_symlink():
                    continue
                if entry.is_file() and os.access(entry, os.X_OK):
                    link.symlink_to(entry)
        return image

    # -- instances: insert, delete, service account, tags ---------------------------------

    def fresh_ip(self, pool: str) -> str:
        """A loopback address of pool that no instance, access config or address has (nor a
        configured instance's own)."""
        used = {i.network_ip for i in self.instances.values()}
        used |= {ic.network_ip for ic in self.cfg.instances if ic.network_ip}
        used |= {a.cfg.address for a in self.addresses.values()}
        used |= {str(ac.get("natIP")) for i in self.instances.values() for ac in i.access_configs}
        for ip in ipaddress.ip_network(pool).hosts():
            if str(ip) not in used and str(ip).rsplit(".", 1)[1] not in ("0", "1", "255"):
                return str(ip)
        raise ApiError(403, "quotaExceeded", f"The emulator's addresses in {pool} are all taken.")

    def known_zone(self, zone: str) -> bool:
        region = catalog.region_of_zone(zone)
        configured = {self.cfg.zone} | {ic.zone for ic in self.cfg.instances}
        return zone in configured or region in catalog.SUBNET_RANGES or region == self.cfg.region

    def region_of(self, zone: str) -> str:
        return catalog.region_of_zone(zone) or self.cfg.region

    def _check_network(self, url: Any, field_name: str, region: str | None = None) -> None:
        """url must name the default network (or, with region, its subnet there)."""
        wanted = (
            f"projects/{self.project}/regions/{region}/subnetworks/default"
            if region
            else f"projects/{self.project}/global/networks/default"
        )
        given = str(url)
        path = given[given.find("projects/") :] if "projects/" in given else given
        if path != wanted and not wanted.endswith("/" + path):
            kind = "subnetwork" if region else "network"
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field '{field_name}': '{given}'. "
                f"The referenced {kind} resource cannot be found.",
            )

    def _tags(self, items: Any, field_name: str) -> list[str]:
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise ApiError(400, "invalid", f"Invalid value for field '{field_name}'.")
        for i, tag in enumerate(items):
            if not NAME_RE.fullmatch(tag):
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field '{field_name}[{i}]': '{tag}'. "
                    f"Must be a match of regex '{NAME_PATTERN}'",
                )
        tags = list(dict.fromkeys(items))
        if len(tags) > MAX_TAGS:  # documented limit; the message is assumed
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field '{field_name}': an instance can have at most "
                f"{MAX_TAGS} tags, not {len(tags)}.",
            )
        return tags

    def _labels(self, labels: Any) -> dict[str, str]:
        if not isinstance(labels, dict):
            raise ApiError(400, "invalid", "Invalid value for field 'labels'.")
        if len(labels) > MAX_LABELS:  # documented limit; the message is assumed
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'labels': a resource can have at most {MAX_LABELS}"
                f" labels, not {len(labels)}.",
            )
        return {str(k): str(v) for k, v in labels.items()}

    @staticmethod
    def _metadata_items(items: Any) -> dict[str, str]:
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("key"), str) for i in items
        ):
            raise ApiError(400, "invalid", "Invalid value for field 'resource.items'.")
        return {i["key"]: str(i.get("value", "")) for i in items}

    def default_account(self) -> str:
        """The project's default compute service account (what `"email": "default"` is)."""
        return f"{self.cfg.project_number}-compute@developer.gserviceaccount.com"

    def _account(
        self, email: str, scopes: list[str], principal: str
    ) -> tuple[tuple[str, list[str]] | None, list[str] | None]:
        """(account, default_scopes) of an instance that runs as email with scopes. Its own
        account must exist when it is one of the project's, and a caller other than the
        operator needs iam.serviceAccounts.actAs on it (on the project for the default one)."""
        iam = self.cloud.iam
        default = email in ("default", self.default_account())
        policy = None
        if not default:
            account = iam.accounts.get(email)
            if account is None and email.endswith(f"@{self.project}.iam.gserviceaccount.com"):
                # the wording is Compute's for a managed instance group's missing account
                # (public reports); instances.insert's own is assumed to match
                raise ApiError(
                    400,
                    "invalid",
                    f"The resource 'One of [{email}]' of type 'serviceAccount' was not found.",
                )
            policy = account.policy if account is not None else None
        if not iam.allowed(principal, "iam.serviceAccounts.actAs", [policy] if policy else []):
            shown = self.default_account() if default else email
            raise ApiError(
                400,
                "invalid",
                f"The user does not have access to service account '{shown}'.  User: "
                f"'{principal.split(':', 1)[-1]}'.  Ask a project owner to grant you the "
                "iam.serviceAccountUser role on the service account",
            )
        if default:
            return None, list(scopes)
        return (email, list(scopes)), None

    def _disk_image(
        self, disk: dict[str, Any], index: int
    ) -> tuple[catalog.Image | None, int | None]:
        """The image and size (GB) of a disk insert creates (None, None: an existing disk)."""
        where = f"resource.disks[{index}].initializeParams"
        init = disk.get("initializeParams")
        if not isinstance(init, dict):
            source = str(disk.get("source") or "")
            # the emulator has no disks of their own: only a disk the instance creates
            path = source[source.find("projects/") :] if "projects/" in source else source
            raise not_found(path or f"projects/{self.project}/disks/")
        image = None
        if init.get("sourceImage"):
            image, path = catalog.source_image(str(init["sourceImage"]))
            if image is None:
                raise not_found(path)
        disk_type = str(init.get("diskType") or "pd-standard")
        if disk_type.rsplit("/", 1)[-1] not in catalog.DISK_TYPES:
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field '{where}.diskType': '{disk_type}'. "
                "The referenced diskType resource cannot be found.",
            )
        least = image.disk_size_gb if image else 10
        try:
            size = int(init.get("diskSizeGb") or least)
        except (TypeError, ValueError):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field '{where}.diskSizeGb': '{init.get('diskSizeGb')}'.",
            ) from None
        if size < least:
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field '{where}.diskSizeGb': '{size}'. Requested disk size "
                f"cannot be smaller than the image size ({least} GB)",
            )
        return image, size

    def attached_disk(
        self,
        inst: Instance,
        disk: dict[str, Any],
        image: catalog.Image | None,
        index: int,
        size: int | None = None,
    ) -> dict[str, Any]:
        """An attachedDisk as instances.get answers it: a disk made for the instance (named
        after it; the boot disk's device `persistent-disk-0` when none is given)."""
        init = disk.get("initializeParams") or {}
        boot = bool(disk.get("boot", index == 0))
        disk_name = init.get("diskName") or (inst.name if boot else f"{inst.name}-{index}")
        body: dict[str, Any] = {
            "kind": "compute#attachedDisk",
            "type": disk.get("type", "PERSISTENT"),
            "mode": disk.get("mode", "READ_WRITE"),
            "source": self.link(f"projects/{self.project}/zones/{inst.zone}/disks/{disk_name}"),
            "deviceName": disk.get("deviceName") or f"persistent-disk-{index}",
            "index": index,
            "boot": boot,
            "autoDelete": bool(disk.get("autoDelete", False)),
            "interface": disk.get("interface", "SCSI"),
            "diskSizeGb": str(size or (image.disk_size_gb if image else 10)),
        }
        if image is not None:
            body["licenses"] = [
                self.link(f"projects/{image.project}/global/licenses/{image.license}")
            ]
            body["architecture"] = image.architecture
        return body

    def _access_config(self, target: str, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """An access config for the instance at link target: its natIP a static address of
        the region that no other resource uses, or a fresh ephemeral one; and that address."""
        nat_ip = body.get("natIP")
        address = None
        if nat_ip:
            address = self.address_by_ip(nat_ip)
            if address is None:
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field 'resource.natIP': '{nat_ip}'. "
                    "The specified external IP address was not found in region "
                    f"'{self.cfg.region}'.",
                )
            if address.users and address.users != [target]:
                raise ApiError(
                    400,
                    "invalid",
                    f"The IP address '{nat_ip}' is already being used by another resource.",
                )
        else:
            nat_ip = next(self._ephemeral)
        config = {
            "kind": "compute#accessConfig",
            "type": body.get("type", "ONE_TO_ONE_NAT"),
            "name": body.get("name", "external-nat"),
            "natIP": nat_ip,
            "networkTier": body.get("networkTier", "PREMIUM"),
        }
        return config, address

    def insert_instance(self, zone: str, body: dict[str, Any], principal: str) -> Operation:
        """instances.insert: a new instance, started as start starts one (PROVISIONING,
        STAGING, RUNNING, then its guest boots); the operation is DONE at RUNNING."""
        name = body.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.name': '{name or ''}'. "
                f"Must be a match of regex '{NAME_PATTERN}'",
            )
        if not self.known_zone(zone):
            raise ApiError(
                400, "invalid", f"Invalid value for field 'zone': '{zone}'. Unknown zone."
            )
        path = f"projects/{self.project}/zones/{zone}/instances/{name}"
        if (zone, name) in self.instances:
            raise ApiError(409, "alreadyExists", f"The resource '{path}' already exists")
        machine_url = str(body.get("machineType") or "")
        machine_type = machine_url.rsplit("/", 1)[-1]
        if not MACHINE_TYPE.fullmatch(machine_type):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.machineType': '{machine_url}'. "
                f"Machine type with name '{machine_type}' does not exist in zone '{zone}'.",
            )
        disks = body.get("disks") or []
        if not isinstance(disks, list) or not all(isinstance(d, dict) for d in disks):
            raise ApiError(400, "invalid", "Invalid value for field 'resource.disks'.")
        images = [self._disk_image(d, i) for i, d in enumerate(disks)]
        nics = body.get("networkInterfaces") or [{}]
        if not isinstance(nics, list) or len(nics) != 1 or not isinstance(nics[0], dict):
            raise ApiError(
                400,
                "invalid",
                "Invalid value for field 'resource.networkInterfaces': the emulator's instances "
                "have one network interface, in the default network.",
            )
        nic = nics[0]
        region = self.region_of(zone)
        if nic.get("network"):
            self._check_network(nic["network"], "resource.networkInterfaces[0].network")
        if nic.get("subnetwork"):
            self._check_network(
                nic["subnetwork"], "resource.networkInterfaces[0].subnetwork", region
            )
        network_ip = nic.get("networkIP")
        if network_ip:
            try:
                loopback = ipaddress.ip_address(str(network_ip)).is_loopback
            except ValueError:
                loopback = False
            taken = any(i.network_ip == network_ip for i in self.instances.values())
            if not loopback or taken:
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field 'resource.networkInterfaces[0].networkIP': "
                    f"'{network_ip}'. The emulator's internal IPs are free IPv4 loopback "
                    "addresses (127.x.y.z).",
                )
        access = nic.get("accessConfigs") or []
        if not isinstance(access, list) or len(access) > 1:
            raise ApiError(400, "badRequest", "At most one access config currently supported.")
        target = self.link(path)
        nat = self._access_config(target, access[0]) if access else None
        metadata = self._metadata_items((body.get("metadata") or {}).get("items") or [])
        labels = self._labels(body.get("labels") or {})
        tags = self._tags((body.get("tags") or {}).get("items") or [], "resource.tags.items")
        accounts = body.get("serviceAccounts") or []
        if not isinstance(accounts, list) or len(accounts) > 1:
            raise ApiError(
                400,
                "invalid",
                "Invalid value for field 'resource.serviceAccounts': at most one service "
                "account can be given.",
            )
        account, default_scopes = None, None
        if accounts:
            account, default_scopes = self._account(
                str(accounts[0].get("email") or "default"),
                list(accounts[0].get("scopes") or []),
                principal,
            )
        scheduling = body.get("scheduling") or {}
        if not isinstance(scheduling, dict):
            raise ApiError(400, "invalid", "Invalid value for field 'resource.scheduling'.")

        # a new instance (its disk too): what a deleted one of that name left is gone
        shutil.rmtree(self.cloud.state_root / "instances" / zone / name, ignore_errors=True)
        ic = InstanceConfig(
            name=name,
            zone=zone,
            guest=self.cfg.guest,
            metadata=metadata,
            machine_type=machine_type,
            env=dict(self.cfg.guest_env),
        )
        inst = self.add_instance(ic, str(network_ip or self.fresh_ip(INTERNAL_IPS)))
        inst.labels = labels
        inst.tags = tags
        inst.scheduling = {k: v for k, v in scheduling.items() if v is not None}
        inst.has_account = bool(accounts)
        inst.account, inst.default_scopes = account, default_scopes
        inst.from_config = False
        inst.disks = [
            self.attached_disk(inst, d, image, i, size)
            for i, (d, (image, size)) in enumerate(zip(disks, images, strict=True))
        ]
        if nat is not None:
            config, address = nat
            inst.access_configs.append(config)
            if address is not None:
                address.users = [target]
        self.record("event", event="insert", instance=f"{zone}/{name}")
        op = self.new_operation(inst, "insert")
        self._power_on(inst, op)  # made TERMINATED: start's path from here
        return op

    def delete_instance(self, inst: Instance) -> Operation:
        """instances.delete: a running VM is stopped as stop stops it (its guest shut down),
        then it is gone and its static address free; the operation is DONE then."""
        op = self.new_operation(inst, "delete")
        inst.waiting.setdefault("DELETED", []).append(op)
        if inst.deleting:
            return op
        inst.deleting = True
        self.record("event", event="delete", instance=f"{inst.zone}/{inst.name}")
        if inst.status == "TERMINATED":
            asyncio.get_running_loop().call_later(OPERATION_SECONDS, self._remove, inst)
        elif inst.status != "STOPPING":
            self._begin_stop(inst)
        return op

    def _remove(self, inst: Instance) -> None:
        if self.instances.get((inst.zone, inst.name)) is not inst:
            return
        del self.instances[(inst.zone, inst.name)]
        for ac in inst.access_configs:
            address = self.address_by_ip(ac.get("natIP", ""))
            if address is not None:
                address.users = []
        self.record("event", event="deleted", instance=f"{inst.zone}/{inst.name}")
        for op in inst.waiting.pop("DELETED", []):
            op.finish()

    def set_service_account(
        self, inst: Instance, body: dict[str, Any], principal: str
    ) -> Operation:
        """instances.setServiceAccount: on a stopped VM only (documented). The refusal's
        words are Compute's for an update that needs a stopped VM (a public report); that
        setServiceAccount answers with them is assumed."""
        if inst.status != "TERMINATED":
            raise ApiError(
                400,
                "invalidResourceUsage",
                "Invalid resource usage: 'Instance should be in the STOPPED state.'",
            )
        email = body.get("email")
        scopes = list(body.get("scopes") or [])
        if not email:
            if scopes:
                raise ApiError(
                    400,
                    "invalid",
                    "Invalid value for field 'resource.scopes': scopes need a service account.",
                )
            inst.has_account, inst.account, inst.default_scopes = False, None, None
        else:
            inst.account, inst.default_scopes = self._account(str(email), scopes, principal)
            inst.has_account = True
        return self.finishing_operation(inst, "setServiceAccount")

    def set_tags(self, inst: Instance, body: dict[str, Any]) -> Operation:
        """instances.setTags: the whole list, with the fingerprint of the tags it replaces
        (a stale one: 412, in words assumed after setMetadata's)."""
        if not same_fingerprint(body.get("fingerprint"), inst.tags_fingerprint):
            raise ApiError(
                412,
                "conditionNotMet",
                "Supplied fingerprint does not match current tags fingerprint.",
            )
        inst.tags = self._tags(body.get("items") or [], "tags.items")
        inst.tags_fingerprint = fingerprint()
        return self.finishing_operation(inst, "setTags")

    # -- addresses, firewall rules, the default network ------------------------------------

    def insert_address(self, project: str, region: str, body: dict[str, Any]) -> Operation:
        """addresses.insert: a regional external address, a fresh loopback IPv4 address (or
        the free loopback one asked for) standing in for a public one."""
        name = body.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.name': '{name or ''}'. "
                f"Must be a match of regex '{NAME_PATTERN}'",
            )
        path = f"projects/{project}/regions/{region}/addresses/{name}"
        if project != self.project:
            raise not_found(f"projects/{project}")
        if (region, name) in self.addresses:
            raise ApiError(409, "alreadyExists", f"The resource '{path}' already exists")
        if str(body.get("addressType") or "EXTERNAL") != "EXTERNAL":
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.addressType': '{body.get('addressType')}'. "
                "The emulator reserves external addresses only.",
            )
        wanted = body.get("address")
        if wanted:
            try:
                loopback = ipaddress.ip_address(str(wanted))
            except ValueError:
                loopback = None
            if loopback is None or not loopback.is_loopback or loopback.version != 4:
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field 'resource.address': '{wanted}'. The emulator's "
                    "addresses are IPv4 loopback addresses (127.x.y.z).",
                )
            if self.address_by_ip(str(wanted)) is not None:
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field 'resource.address': '{wanted}'. "
                    "The specified IP address is already reserved.",
                )
        ip = str(wanted or self.fresh_ip(STATIC_IPS))
        addr = Address(
            AddressConfig(name=name, region=region, address=ip), project, str(next(_ids))
        )
        self.addresses[(region, name)] = addr
        self.record("event", event="address_insert", address=f"{region}/{name}", ip=ip)
        return self.scoped_operation(
            f"regions/{region}", "insert", addr.path, addr.id, OPERATION_SECONDS
        )

    def delete_address(self, addr: Address) -> Operation:
        """addresses.delete: refused while an instance uses it, as Compute refuses it."""
        if addr.users:
            user = addr.users[0].split("/compute/v1/", 1)[-1]
            raise ApiError(
                400,
                "resourceInUseByAnotherResource",
                f"The address resource '{addr.path}' is already being used by '{user}'",
            )
        del self.addresses[(addr.cfg.region, addr.cfg.name)]
        self.record("event", event="address_delete", address=f"{addr.cfg.region}/{addr.cfg.name}")
        return self.scoped_operation(
            f"regions/{addr.cfg.region}", "delete", addr.path, addr.id, OPERATION_SECONDS
        )

    def firewall(self, project: str, name: str) -> Firewall:
        fw = self.firewalls.get(name) if project == self.project else None
        if fw is None:
            raise not_found(f"projects/{project}/global/firewalls/{name}")
        return fw

    def _firewall_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A rule's fields checked, with Compute's defaults for those it lacks."""
        out = {
            k: v
            for k, v in fields.items()
            if k in FIREWALL_FIELDS and v is not None and v != [] and v != ""
        }
        self._check_network(out.get("network", "default"), "resource.network")
        out["network"] = self.link(f"projects/{self.project}/global/networks/default")
        direction = out.setdefault("direction", "INGRESS")
        if direction not in ("INGRESS", "EGRESS"):
            raise ApiError(
                400, "invalid", f"Invalid value for field 'resource.direction': '{direction}'."
            )
        priority = out.setdefault("priority", 1000)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not 0 <= priority <= 65535
        ):
            raise ApiError(
                400, "invalid", f"Invalid value for field 'resource.priority': '{priority}'."
            )
        for key in ("allowed", "denied"):
            rules = out.get(key, [])
            if not isinstance(rules, list) or not all(
                isinstance(r, dict) and r.get("IPProtocol") for r in rules
            ):
                raise ApiError(400, "invalid", f"Invalid value for field 'resource.{key}'.")
        if direction == "INGRESS" and not any(
            out.get(k) for k in ("sourceRanges", "sourceTags", "sourceServiceAccounts")
        ):
            out["sourceRanges"] = ["0.0.0.0/0"]
        if direction == "EGRESS" and not out.get("destinationRanges"):
            out["destinationRanges"] = ["0.0.0.0/0"]
        out.setdefault("logConfig", {"enable": False})
        out.setdefault("disabled", False)
        return out

    def insert_firewall(self, project: str, body: dict[str, Any]) -> Operation:
        """firewalls.insert (a global operation). See Firewall: nothing is filtered by it."""
        name = body.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.name': '{name or ''}'. "
                f"Must be a match of regex '{NAME_PATTERN}'",
            )
        if project != self.project:
            raise not_found(f"projects/{project}")
        path = f"projects/{project}/global/firewalls/{name}"
        if name in self.firewalls:
            raise ApiError(409, "alreadyExists", f"The resource '{path}' already exists")
        fw = Firewall(name, project, str(next(_ids)), self._firewall_fields(body))
        self.firewalls[name] = fw
        self.record("event", event="firewall_insert", firewall=name)
        return self.scoped_operation("global", "insert", fw.path, fw.id, OPERATION_SECONDS)

    def patch_firewall(self, fw: Firewall, body: dict[str, Any]) -> Operation:
        """firewalls.patch: JSON merge patch of the rule's fields (a null or an empty list
        clears one); its name, network and id stay."""
        merged = dict(fw.fields)
        for key, value in body.items():
            if key not in FIREWALL_FIELDS or key == "network":
                continue
            if value is None or value == []:
                merged.pop(key, None)
            else:
                merged[key] = value
        if body.get("network"):
            self._check_network(body["network"], "resource.network")
        fw.fields = self._firewall_fields(merged)
        self.record("event", event="firewall_patch", firewall=fw.name)
        return self.scoped_operation("global", "patch", fw.path, fw.id, OPERATION_SECONDS)

    def delete_firewall(self, fw: Firewall) -> Operation:
        del self.firewalls[fw.name]
        self.record("event", event="firewall_delete", firewall=fw.name)
        return self.scoped_operation("global", "delete", fw.path, fw.id, OPERATION_SECONDS)

    # -- network ---------------------------------------------------------------------------

    def add_access_config(self, inst: Instance, nic: str, body: dict[str, Any]) -> Operation:
        self._nic(inst, nic)
        if inst.access_configs:
            raise ApiError(400, "badRequest", "At most one access config currently supported.")
        config, address = self._access_config(self.link(inst.path), body)
        inst.access_configs.append(config)
        if address is not None:
            address.users = [self.link(inst.path)]
        inst.nic_fingerprint = fingerprint()
        return self.done_operation(inst, "addAccessConfig")

    def delete_access_config(self, inst: Instance, nic: str, name: str) -> Operation:
        self._nic(inst, nic)
        for ac in inst.access_configs:
            if ac["name"] == name:
                inst.access_configs.remove(ac)
                address = self.address_by_ip(ac.get("natIP", ""))
                if address is not None:
                    address.users = []
                inst.nic_fingerprint = fingerprint()
                return self.done_operation(inst, "deleteAccessConfig")
        raise ApiError(
            400,
            "invalid",
            f"Invalid value for field 'accessConfig': '{name}'. The access config was not found.",
        )

    def _nic(self, inst: Instance, nic: str) -> None:
        if nic != "nic0":
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'networkInterface': '{nic}'. "
                "The network interface was not found.",
            )

    def address_by_ip(self, ip: str) -> Address | None:
        for addr in self.addresses.values():
            if addr.cfg.address == ip:
                return addr
        return None

    def set_metadata(self, inst: Instance, body: dict[str, Any]) -> Operation:
        if not same_fingerprint(body.get("fingerprint"), inst.metadata_fingerprint):
            return self.done_operation(
                inst,
                "setMetadata",
                ApiError(
                    412,
                    "CONDITION_NOT_MET",
                    "Supplied fingerprint does not match current metadata fingerprint.",
                ),
            )
        items = body.get("items") or []
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("key"), str) for i in items
        ):
            raise ApiError(400, "invalid", "Invalid value for field 'resource.items'.")
        inst.metadata = {i["key"]: str(i.get("value", "")) for i in items}
        inst.metadata_fingerprint = fingerprint()
        return self.done_operation(inst, "setMetadata")

    def set_labels(self, inst: Instance, body: dict[str, Any]) -> Operation:
        """A stale labelFingerprint is refused as `label_conflict` says: a synchronous 412
        `conditionNotMet` (the answer quoted in public bug reports), or an operation that ends
        with that error (as the emulator answers setMetadata)."""
        if not same_fingerprint(body.get("labelFingerprint"), inst.label_fingerprint):
            message = "Labels fingerprint either invalid or resource labels have changed"
            if self.cfg.label_conflict == "http":
                raise ApiError(412, "conditionNotMet", message)
            return self.finishing_operation(
                inst, "setLabels", ApiError(412, "CONDITION_NOT_MET", message)
            )
        inst.labels = self._labels(body.get("labels") or {})
        inst.label_fingerprint = fingerprint()
        return self.finishing_operation(inst, "setLabels")

    def finishing_operation(
        self, inst: Instance, op_type: str, error: ApiError | None = None
    ) -> Operation:
        """An operation answered RUNNING and DONE a moment later, as Compute answers setLabels
        (the change itself is made at once; callers follow the operation to DONE)."""
        op = self.new_operation(inst, op_type)
        asyncio.get_running_loop().call_later(OPERATION_SECONDS, op.finish, error)
        return op

    # -- rendering -------------------------------------------------------------------------

    def instance_json(self, inst: Instance) -> dict[str, Any]:
        zone_link = self.link(f"projects/{self.project}/zones/{inst.zone}")
        nic: dict[str, Any] = {
            "kind": "compute#networkInterface",
            "name": "nic0",
            "network": self.link(f"projects/{self.project}/global/networks/default"),
            "subnetwork": self.link(
                f"projects/{self.project}/regions/{self.region_of(inst.zone)}/subnetworks/default"
            ),
            "networkIP": inst.network_ip,
            "fingerprint": inst.nic_fingerprint,
            "stackType": "IPV4_ONLY",
        }
        if inst.access_configs:
            nic["accessConfigs"] = [dict(ac) for ac in inst.access_configs]
        body: dict[str, Any] = {
            "kind": "compute#instance",
            "id": inst.id,
            "creationTimestamp": inst.created,
            "name": inst.name,
            "zone": zone_link,
            "machineType": f"{zone_link}/machineTypes/{inst.machine_type}",
            "status": inst.status,
            "networkInterfaces": [nic],
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": inst.metadata_fingerprint,
                "items": [{"key": k, "value": v} for k, v in sorted(inst.metadata.items())],
            },
            "labelFingerprint": inst.label_fingerprint,
            "tags": {"fingerprint": inst.tags_fingerprint},
            "disks": [dict(d) for d in inst.disks],
            "selfLink": self.link(inst.path),
            "cpuPlatform": "Unknown CPU Platform",
            "canIpForward": False,
            "deletionProtection": False,
        }
        if inst.tags:
            body["tags"]["items"] = list(inst.tags)
        if inst.has_account:
            email, scopes = inst.account or (
                self.default_account(),
                inst.default_scopes if inst.default_scopes is not None else CONFIGURED_SCOPES,
            )
            body["serviceAccounts"] = [{"email": email, "scopes": list(scopes)}]
        body["scheduling"] = {
            "onHostMaintenance": "MIGRATE",
            "automaticRestart": True,
            "preemptible": False,
            "provisioningModel": "STANDARD",
            **inst.scheduling,
        }
        if inst.labels:
            body["labels"] = dict(inst.labels)
        if inst.last_start:
            body["lastStartTimestamp"] = inst.last_start
        if inst.last_stop:
            body["lastStopTimestamp"] = inst.last_stop
        return body

    def operation_json(self, op: Operation) -> dict[str, Any]:
        scope_link = self.link(f"projects/{self.project}/{op.scope}")
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(abs(hash(op.name)) % 10**18),
            "name": op.name,
            "operationType": op.op_type,
            "targetLink": self.link(op.target_path),
            "targetId": op.target_id,
            "status": op.status,
            "user": "emulator@example.com",
            "progress": 100 if op.status == "DONE" else 0,
            "insertTime": op.insert_time,
            "startTime": op.insert_time,
            "selfLink": f"{scope_link}/operations/{op.name}",
        }
        if op.scope.startswith("zones/"):
            body["zone"] = scope_link
        elif op.scope.startswith("regions/"):
            body["region"] = scope_link
        if op.end_time:
            body["endTime"] = op.end_time
        if op.error is not None:
            body["error"] = {"errors": [{"code": op.error.reason, "message": op.error.message}]}
            body["httpErrorStatusCode"] = op.error.code
            body["httpErrorMessage"] = HTTP_ERROR_MESSAGES.get(op.error.code, "ERROR")
        return body

    def address_json(self, addr: Address) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "compute#address",
            "id": addr.id,
            "creationTimestamp": addr.created,
            "name": addr.cfg.name,
            "address": addr.cfg.address,
            "addressType": "EXTERNAL",
            "networkTier": "PREMIUM",
            "status": "IN_USE" if addr.users else "RESERVED",
            "region": self.link(f"projects/{self.project}/regions/{addr.cfg.region}"),
            "selfLink": self.link(addr.path),
        }
        if addr.users:
            body["users"] = list(addr.users)
        return body

    def firewall_json(self, fw: Firewall) -> dict[str, Any]:
        return {
            "kind": "compute#firewall",
            "id": fw.id,
            "creationTimestamp": fw.created,
            "name": fw.name,
            **fw.fields,
            "selfLink": self.link(fw.path),
        }

    def network_json(self) -> dict[str, Any]:
        """The project's `default` network: auto mode, a subnet in every region."""
        base = f"projects/{self.project}"
        return {
            "kind": "compute#network",
            "id": self.network_id,
            "creationTimestamp": self.created,
            "name": "default",
            "description": "Default network for the project",
            "selfLink": self.link(f"{base}/global/networks/default"),
            "selfLinkWithId": self.link(f"{base}/global/networks/{self.network_id}"),
            "autoCreateSubnetworks": True,
            "subnetworks": [
                self.link(f"{base}/regions/{r}/subnetworks/default")
                for r in sorted(catalog.SUBNET_RANGES)
            ],
            "routingConfig": {"routingMode": "REGIONAL"},
            "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
        }

    def subnetwork_json(self, project: str, region: str, name: str) -> dict[str, Any]:
        """The default network's subnet of region (its range as the auto-mode table has it)."""
        cidr = catalog.SUBNET_RANGES.get(region) if project == self.project else None
        path = f"projects/{project}/regions/{region}/subnetworks/{name}"
        if cidr is None or name != "default":
            raise not_found(path)
        network = ipaddress.ip_network(cidr)
        return {
            "kind": "compute#subnetwork",
            "id": self.subnet_ids[region],
            "creationTimestamp": self.created,
            "name": "default",
            "network": self.link(f"projects/{project}/global/networks/default"),
            "ipCidrRange": cidr,
            "gatewayAddress": str(network.network_address + 1),
            "region": self.link(f"projects/{project}/regions/{region}"),
            "selfLink": self.link(path),
            "privateIpGoogleAccess": False,
            "fingerprint": base64.b64encode(self.subnet_ids[region].encode()[:8]).decode(),
            "purpose": "PRIVATE",
            "stackType": "IPV4_ONLY",
        }

    def zone_json(self, project: str, zone: str) -> dict[str, Any]:
        if project != self.project or not self.known_zone(zone):
            raise not_found(f"projects/{project}/zones/{zone}")
        return {
            "kind": "compute#zone",
            "id": str(2000 + sum(map(ord, zone))),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": zone,
            "description": zone,
            "status": "UP",
            "region": self.link(f"projects/{project}/regions/{self.region_of(zone)}"),
            "selfLink": self.link(f"projects/{project}/zones/{zone}"),
            "supportsPzs": False,
        }

    def project_json(self, project: str) -> dict[str, Any]:
        if project != self.project:
            raise not_found(f"projects/{project}")
        return {
            "kind": "compute#project",
            "id": str(self.cfg.project_number),
            "creationTimestamp": self.created,
            "name": project,
            "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": "42WmSpB8rSM="},
            "defaultServiceAccount": self.default_account(),
            "defaultNetworkTier": "PREMIUM",
            "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
            "selfLink": self.link(f"projects/{project}"),
        }

    def machine_type_json(self, project: str, zone: str, name: str) -> dict[str, Any]:
        shape = catalog.machine_shape(name)
        path = f"projects/{project}/zones/{zone}/machineTypes/{name}"
        if shape is None or project != self.project or not self.known_zone(zone):
            raise not_found(path)
        cpus, memory = shape
        return {
            "kind": "compute#machineType",
            "id": str(abs(hash(name)) % 10**7),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": name,
            "description": f"{cpus} vCPU{'s' if cpus > 1 else ''}, {memory / 1024:g} GB RAM",
            "guestCpus": cpus,
            "memoryMb": memory,
            "maximumPersistentDisks": 128,
            "maximumPersistentDisksSizeGb": "263168",
            "zone": zone,
            "selfLink": self.link(path),
            "isSharedCpu": name.split("-", 1)[1] in catalog.SHARED_CORE,
        }

    def image_json(self, image: catalog.Image) -> dict[str, Any]:
        return {
            "kind": "compute#image",
            "id": str(abs(hash(image.name)) % 10**18),
            "creationTimestamp": "2025-06-10T00:00:00.000-07:00",
            "name": image.name,
            "description": image.description,
            "family": image.family,
            "sourceType": "RAW",
            "status": "READY",
            "diskSizeGb": str(image.disk_size_gb),
            "architecture": image.architecture,
            "licenses": [self.link(f"projects/{image.project}/global/licenses/{image.license}")],
            "selfLink": self.link(f"projects/{image.project}/global/images/{image.name}"),
        }

    def state_json(self) -> dict[str, Any]:
        """Compute's part of the emulator's state (GET /_emulator/state)."""
        return {
            "instances": [
                {
                    "zone": i.zone,
                    "name": i.name,
                    "status": i.status,
                    "access_configs": [dict(ac) for ac in i.access_configs],
                    "metadata": dict(i.metadata),
                    "labels": dict(i.labels),
                    "guest_attributes": dict(i.guest_attributes),
                    "guest_pids": i.guest.pids() if i.guest else [],
                    "guest_exit_status": i.guest.exit_status if i.guest else None,
                    "workdir": str(i.workdir),
                    "dir": str(i.dir),
                    "network_ip": i.network_ip,
                    "machine_type": i.machine_type,
                    "scheduling": dict(i.scheduling),
                    "tags": list(i.tags),
                    "service_account": (
                        (i.account or (self.default_account(), []))[0] if i.has_account else None
                    ),
                }
                for i in self.instances.values()
            ],
            "addresses": [
                {
                    "region": a.cfg.region,
                    "name": a.cfg.name,
                    "address": a.cfg.address,
                    "status": "IN_USE" if a.users else "RESERVED",
                    "users": list(a.users),
                }
                for a in self.addresses.values()
            ],
            "firewalls": [self.firewall_json(fw) for fw in self.firewalls.values()],
        }
