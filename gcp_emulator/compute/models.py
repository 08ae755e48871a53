"""Compute Engine's state and behaviour: instances and their lifecycle, static addresses, zone
operations, the stockouts a test sets (docs/google-cloud.md, "Instances").

start: TERMINATED -> PROVISIONING -> STAGING -> RUNNING (the operation is DONE here), then
after `boot_delay` the guest's startup script starts. stop: -> STOPPING, the guest shut down as
a VM's shutdown goes, -> TERMINATED (DONE). start on RUNNING and stop on TERMINATED are no-op
operations. Every status change and guest event goes to the journal with the request log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcp_emulator.compute.capacity import MACHINE_TYPE, Stockout, refusal
from gcp_emulator.config import AddressConfig, InstanceConfig
from gcp_emulator.core.errors import ApiError, not_found
from gcp_emulator.core.util import fingerprint, now_rfc3339, same_fingerprint
from gcp_emulator.guests import qemu, vm_image
from gcp_emulator.guests.process import ProcessGuest
from gcp_emulator.guests.qemu import QemuGuest
from gcp_emulator.guests.serial_port import SerialPort

if TYPE_CHECKING:
    from gcp_emulator.config import EmulatorConfig
    from gcp_emulator.core.state import Cloud

logger = logging.getLogger(__name__)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default

# an operation's httpErrorMessage for its httpErrorStatusCode
HTTP_ERROR_MESSAGES = {403: "FORBIDDEN", 412: "PRECONDITION FAILED", 503: "SERVICE UNAVAILABLE"}
OPERATION_SECONDS = 0.05  # how long a quick operation (setLabels) stays RUNNING
MAX_LABELS = 64  # labels a resource may have (Compute Engine's documented limit)
_ids = itertools.count(1000000000000000001)
Guest = ProcessGuest | QemuGuest


@dataclass
class Operation:
    name: str
    zone: str
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
    # the service account it runs as (email, scopes) when it was created with one; None: the
    # project's default account of a configured VM, whose token is the operator's
    account: tuple[str, list[str]] | None = None
    has_account: bool = True  # False: created with --no-service-account

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

    @property
    def path(self) -> str:
        return f"projects/{self.project}/regions/{self.cfg.region}/addresses/{self.cfg.name}"


class Compute:
    """Compute Engine's backend: one method per API call, and the lifecycle behind them."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.operations: dict[tuple[str, str], Operation] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.addresses: dict[tuple[str, str], Address] = {}
        self.stockouts: list[Stockout] = []
        self._ephemeral = (f"127.0.200.{n}" for n in itertools.count(1))
        for n, ic in enumerate(self.cfg.instances, start=2):
            self.add_instance(ic, ic.network_ip or f"127.0.100.{n}")
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

    def operation(self, project: str, zone: str, name: str) -> Operation:
        op = self.operations.get((zone, name)) if project == self.project else None
        if op is None:
            raise not_found(f"projects/{project}/zones/{zone}/operations/{name}")
        return op

    def new_operation(self, inst: Instance, op_type: str) -> Operation:
        name = f"operation-{int(time.time() * 1000)}-{os.urandom(7).hex()[:13]}"
        op = Operation(
            name=name, zone=inst.zone, op_type=op_type, target_path=inst.path, target_id=inst.id
        )
        self.operations[(inst.zone, name)] = op
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

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, inst: Instance) -> Operation:
        if inst.status == "RUNNING":
            return self.done_operation(inst, "start")
        if inst.status in ("STOPPING", "SUSPENDING"):
            raise ApiError(400, "resourceNotReady", f"The resource '{inst.path}' is not ready")
        op = self.new_operation(inst, "start")
        inst.waiting.setdefault("RUNNING", []).append(op)
        if inst.status == "TERMINATED":
            refused = next(
                (s for s in self.stockouts if s.refuses(inst.zone, inst.machine_type)), None
            )
            if refused is not None:
                self.set_status(inst, "PROVISIONING")
                inst.task = asyncio.get_running_loop().create_task(self._refuse(inst, refused))
                return op
            inst.last_start = now_rfc3339()
            inst.guest_attributes.clear()
            if inst.cfg.console_after_stop == "cleared":
                inst.serial.clear()
            self.set_status(inst, "PROVISIONING")
            inst.task = asyncio.get_running_loop().create_task(self._boot(inst))
        return op

    async def _refuse(self, inst: Instance, stockout: Stockout) -> None:
        """A start the zone has no capacity (or the project no quota) for: PROVISIONING, then
        back to TERMINATED, the operation ending with the error."""
        await asyncio.sleep(inst.cfg.provision_delay)
        status, message = refusal(stockout.code, self.project, inst.zone, self.cfg.region)
        self.record(
            "event", event="stockout", instance=f"{inst.zone}/{inst.name}", code=stockout.code
        )
        self.set_status(inst, "TERMINATED")
        for op in inst.waiting.pop("RUNNING", []):
            op.finish(ApiError(status, stockout.code, message))

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
        stopped as a stop through the API stops it (this emulator never deletes one)."""
        inst.running_since += 1
        limit = self.run_limit(inst)
        if limit is None:
            return
        entry = inst.running_since

        def expire() -> None:
            if inst.running_since == entry and inst.status in ("RUNNING", "REPAIRING"):
                self.record("event", event="max_run_duration", instance=f"{inst.zone}/{inst.name}")
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

    # -- network ---------------------------------------------------------------------------

    def add_access_config(self, inst: Instance, nic: str, body: dict[str, Any]) -> Operation:
        self._nic(inst, nic)
        if inst.access_configs:
            raise ApiError(400, "badRequest", "At most one access config currently supported.")
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
            if address.users and address.users != [self.link(inst.path)]:
                raise ApiError(
                    400,
                    "invalid",
                    f"The IP address '{nat_ip}' is already being used by another resource.",
                )
        else:
            nat_ip = next(self._ephemeral)
        inst.access_configs.append(
            {
                "kind": "compute#accessConfig",
                "type": body.get("type", "ONE_TO_ONE_NAT"),
                "name": body.get("name", "external-nat"),
                "natIP": nat_ip,
                "networkTier": body.get("networkTier", "PREMIUM"),
            }
        )
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
        labels = body.get("labels") or {}
        if not isinstance(labels, dict):
            raise ApiError(400, "invalid", "Invalid value for field 'labels'.")
        if len(labels) > MAX_LABELS:  # documented limit; the message is assumed
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'labels': a resource can have at most {MAX_LABELS}"
                f" labels, not {len(labels)}.",
            )
        inst.labels = {str(k): str(v) for k, v in labels.items()}
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
                f"projects/{self.project}/regions/{self.cfg.region}/subnetworks/default"
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
            "selfLink": self.link(inst.path),
            "cpuPlatform": "Unknown CPU Platform",
            "canIpForward": False,
            "deletionProtection": False,
        }
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
        zone_link = self.link(f"projects/{self.project}/zones/{op.zone}")
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(abs(hash(op.name)) % 10**18),
            "name": op.name,
            "zone": zone_link,
            "operationType": op.op_type,
            "targetLink": self.link(op.target_path),
            "targetId": op.target_id,
            "status": op.status,
            "user": "emulator@example.com",
            "progress": 100 if op.status == "DONE" else 0,
            "insertTime": op.insert_time,
            "startTime": op.insert_time,
            "selfLink": f"{zone_link}/operations/{op.name}",
        }
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
            "creationTimestamp": now_rfc3339(),
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
        }
