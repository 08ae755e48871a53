"""A local stand-in for the Google Cloud APIs this project uses, for the real gcloud.

serve [--config F] [--port P]      print the `export` lines a shell needs, serve until Ctrl-C
run [--config F] [--port P] -- CMD start it, run CMD with that environment, stop every guest
                                   and the emulator, exit with CMD's status
demo [--mode test] [--keep]        the whole flow on this machine: a VM booted with startup.sh,
     [--keep-running]              entrypoint.sh run against it (--keep-running: leave the VM up
     [--vm qemu]                   for ./entrypoint.sh status and logs until Ctrl-C; --vm qemu:
                                   a real Debian 12 VM under QEMU, as root, minutes)
demo --scheduled [--slots N]       as root: deploy.sh apply from an empty project in the private
     [--fast]                      network, then Cloud Scheduler fires N slots (each minute;
                                   --fast: the test clock fires them, the first at once), each
                                   execution shown as gcloud shows it; deploy.sh destroy at the end

docs/emulator.md has the configuration, what it answers and what it assumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import uvicorn

from gcp_emulator.config import ConfigError, EmulatorConfig, load_config
from gcp_emulator.core.app import EmulatorApp, WithoutHooks
from gcp_emulator.core.state import Cloud
from gcp_emulator.demo import REPO, GitServer, demo_config, deployment, make_disk
from gcp_emulator.guests import vm_image
from gcp_emulator.guests.qemu import qemu_missing
from gcp_emulator.network import namespace, tls

logger = logging.getLogger("gcp_emulator")

POWEROFF = """#!/usr/bin/env bash
# poweroff for an emulated VM: asks the emulator to stop this instance, as the real one would.
exec curl -fsS -X POST -H 'Metadata-Flavor: Google' \\
  "http://${GCE_METADATA_HOST:?not inside an emulated VM}/emulator/poweroff" >/dev/null
"""


APT_GET = """#!/usr/bin/env bash
# apt-get for an emulated VM: it never touches the host's packages. `install PKG` puts PKG's
# command (a link to the host's copy) back into the guest's image when the instance was told it
# is missing (missing_commands); every call is noted in the instance's apt-get.log.
set -u
printf '%s\\n' "$*" >>"${GCP_EMULATOR_APT_LOG:?not inside an emulated VM}"
case " $* " in
  *" update "*) echo "Reading package lists... Done"; exit 0 ;;
  *" install "*) ;;
  *) echo "E: the emulator's apt-get knows update and install" >&2; exit 100 ;;
esac
for pkg in "$@"; do
  case $pkg in
    -* | install) continue ;;
    python3-pip) cmd=pip3 ;;
    openssh-client) cmd=ssh ;;
    *) cmd=$pkg ;;
  esac
  if ! real=$(PATH=$GCP_EMULATOR_HOST_PATH command -v "$cmd"); then
    echo "E: Unable to locate package $pkg" >&2
    exit 100
  fi
  [[ -z ${GCP_EMULATOR_IMAGE_BIN:-} ]] || ln -sf "$real" "$GCP_EMULATOR_IMAGE_BIN/$cmd"
  echo "Setting up $pkg (emulator) ..."
done
"""


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: the CLI owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Emulator:
    """The emulator in this process's event loop: `async with Emulator(cfg) as emu: ...`."""

    def __init__(
        self,
        cfg: EmulatorConfig,
        port: int = 0,
        host: str = "127.0.0.1",
        state_dir: Path | None = None,
        private_network: bool = False,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"--host {host}: the emulator listens on loopback addresses only")
        if private_network and (why := namespace.unavailable()) is not None:
            raise ConfigError(f"--private-network: {why}")
        if private_network and any(ic.guest == "qemu" for ic in cfg.instances):
            raise ConfigError(
                "--private-network: a real VM (guest = qemu) cannot boot there: its first boot "
                "needs Debian's mirror and PyPI, which nothing there reaches"
            )
        self.cfg = cfg
        self.host = host
        self.port = port
        self.private_network = private_network
        self._own_state = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="gcp-emulator-"))
        self.url = ""
        self.cloud: Cloud | None = None
        self.net: namespace.PrivateNetwork | None = None
        self._servers: list[tuple[_Server, asyncio.Task[None]]] = []

    async def __aenter__(self) -> Emulator:
        sock = self._listen_here()
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        bin_dir = self.state_dir / "guest-bin"
        bin_dir.mkdir(exist_ok=True)
        for name, text in (("poweroff", POWEROFF), ("apt-get", APT_GET)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        plain, tls_sockets, certs = [sock], [], None
        try:
            if self.private_network:
                certs = tls.make(self.state_dir / "tls")
                self.net = namespace.PrivateNetwork(self.state_dir / "network", certs).start()
                # the same port inside, so that one URL reaches the emulator from both sides
                plain.append(self.net.listen(self.host, self.port))
                plain.append(self.net.listen(namespace.METADATA_IP, 80))
                tls_sockets.append(self.net.listen("127.0.0.1", 443))
            self.cloud = Cloud(self.cfg, self.state_dir, self.url, bin_dir, self.net)
            app = EmulatorApp(self.cloud)
            await self._serve(app, plain[:1])
            if len(plain) > 1:  # inside the private network: no test hooks there
                await self._serve(WithoutHooks(app), plain[1:])
            if tls_sockets and certs is not None:
                await self._serve(WithoutHooks(app), tls_sockets, certs)
        except BaseException:
            for s in plain + tls_sockets:
                s.close()
            await self.__aexit__()
            raise
        self.cloud.boot_configured()
        logger.info("emulator ready on %s (state in %s)", self.url, self.state_dir)
        return self

    def _listen_here(self) -> socket.socket:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
        # every answer waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            if self._own_state:  # nothing was started: leave no empty temp dir behind
                shutil.rmtree(self.state_dir, ignore_errors=True)
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        return sock

    async def _serve(self, app: Any, sockets: list[socket.socket], certs=None) -> None:
        """One uvicorn server for these sockets (TLS with certs), started."""
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
            ssl_keyfile=str(certs.key) if certs else None,
            ssl_certfile=str(certs.cert) if certs else None,
        )
        server = _Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the emulator's server stopped during start-up")
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.cloud is not None:
                await self.cloud.close()
        finally:
            if self.cloud is not None:
                self.cloud.kill_all_now()
            for server, task in self._servers:
                server.should_exit = True
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._servers.clear()
            if self.net is not None:
                self.net.stop()
            if self._own_state:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def command(self, argv: list[str]) -> list[str]:
        """argv as it is run to reach this emulator: inside its private network, if it has one."""
        return self.net.command(argv) if self.net is not None else argv

    def env(self) -> dict[str, str]:
        """The variables that point gcloud (and our scripts) at this emulator. In its private
        network gcloud needs no endpoint override: only the CA it trusts, and a token."""
        if self.cloud is None:
            raise RuntimeError("start the emulator first")
        gcloud_dir = self.state_dir / "gcloud"
        gcloud_dir.mkdir(exist_ok=True)
        env = self.cloud.gcloud_env(gcloud_dir)
        if self.net is not None:
            env = {k: v for k, v in env.items() if "_ENDPOINT_OVERRIDES_" not in k}
            env["CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE"] = str(tls.SYSTEM_BUNDLE)
            env["GCP_EMULATOR_NETNS"] = str(self.net.pid)
        env["GCP_EMULATOR_URL"] = self.url
        env["GCE_METADATA_ROOT"] = env["GCE_METADATA_IP"] = f"{self.host}:{self.port}"
        env["PROJECT_ID"] = self.cfg.project
        env["REGION"] = self.cfg.region
        env["ZONE"] = self.cfg.zone
        if len(self.cfg.instances) == 1:
            env["INSTANCE"] = self.cfg.instances[0].name
        if len(self.cfg.addresses) == 1:
            env["STATIC_NAME"] = self.cfg.addresses[0].name
        return env


# -- commands --------------------------------------------------------------------------------

# the demo VM's token-secret (a name, not a secret): one token, read by both sides
DEMO_TOKEN_SECRET = "agent-token"  # noqa: S105
CONVENIENCE = ("PROJECT_ID", "REGION", "ZONE", "INSTANCE", "STATIC_NAME")


async def serve(emu: Emulator) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emu:
        for key, value in emu.env().items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# emulator on {emu.url}; Ctrl-C stops it and every guest", flush=True)
        await stop.wait()
    return 0


Linger = Callable[[dict[str, str], asyncio.Event], Awaitable[None]]


async def run(
    emu: Emulator,
    command: list[str],
    extra_env: dict[str, str] | None = None,
    linger: Linger | None = None,
) -> int:
    """Start the emulator, run command with its environment (plus extra_env), stop it all.

    SIGINT and SIGTERM are ours from the first line: one that arrives before the command has
    started is passed on as soon as it has (or the command is not started at all), so a Ctrl-C
    at any moment stops the command and every guest. With linger, a command that succeeded is
    followed by linger(its environment, an event set by the next SIGINT or SIGTERM) before the
    emulator stops."""
    loop = asyncio.get_running_loop()
    child: asyncio.subprocess.Process | None = None
    received: list[int] = []
    interrupted = asyncio.Event()

    def send(sig: int) -> None:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)

    def forward(sig: int) -> None:
        received.append(sig)
        interrupted.set()
        send(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward, sig)
    try:
        async with emu:
            if received:
                return 128 + received[0]
            env = dict(os.environ)
            for key, value in emu.env().items():
                if key in CONVENIENCE:
                    env.setdefault(key, value)  # the caller's own choice stands
                else:
                    env[key] = value
            env.update(extra_env or {})
            try:
                child = await asyncio.create_subprocess_exec(
                    *emu.command(command), env=env, process_group=0
                )
            except OSError as exc:
                print(f"gcp_emulator: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
                return 127
            for sig in list(received):  # arrived while the command was being started
                send(sig)
            rc = await child.wait()
            if rc == 0 and linger is not None and not received:
                await linger({k: v for k, v in env.items() if os.environ.get(k) != v}, interrupted)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if rc < 0:
        return 128 - rc
    return rc


async def leave_running(base: Path, env: dict[str, str], stop: asyncio.Event) -> None:
    """demo --keep-running: the VM stays up for `status` and `logs`; its environment (the token
    too) goes to a file only its owner can read, never to the terminal."""
    env_file = base / "env.sh"
    with os.fdopen(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.writelines(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
    print(
        f"demo: demo-vm stays up, with its address and its claim. In another shell:\n"
        f"  source {env_file}   # the emulator's endpoints, the demo's settings and token\n"
        f"  ./entrypoint.sh status\n"
        f"  ./entrypoint.sh logs\n"
        f"demo: Ctrl-C here stops the VM and the emulator",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


async def run_demo(mode: str, keep: bool, keep_running: bool = False, vm: str = "process") -> int:
    """The one-command local flow; the exit status is entrypoint.sh's."""
    if vm == "qemu" and (why := qemu_missing()) is not None:
        say(f"--vm qemu cannot run here: {why}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="vm-job-demo-"))
    if os.geteuid() == 0:  # the agent's user reaches the disk and the guest's poweroff
        (base / "emulator").mkdir()
        for p in (base, base / "emulator"):
            p.chmod(0o755)
    try:
        with contextlib.ExitStack() as stack:
            disk = make_disk(base / "vm")
            if vm == "qemu":
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                say(f"the VM image (Debian 12, {vm_image.cache_root()}): built once, about 90 s")
                image = await asyncio.to_thread(vm_image.build)
                say(f"the VM image is {image.dir} ({loop.time() - t0:.0f} s)")
                git = stack.enter_context(GitServer(disk.base))
                demo = demo_config(
                    disk, repo_url=git.url(disk.origin), token_secret=DEMO_TOKEN_SECRET
                )
                say(
                    f"VM demo-vm is Debian 12 under QEMU; at its first boot startup.sh clones "
                    f"{git.url(disk.origin)} (a snapshot of {REPO}, served by git daemon on "
                    f"127.0.0.1:{git.port}) and installs git and uv; it reads its .env secret "
                    f"(a demo job) and, as docs/deploy.md sets it up, the agent's token from the "
                    f"secret {DEMO_TOKEN_SECRET}; running ./entrypoint.sh with MODE={mode}, "
                    f"BOOT_TIMEOUT={demo.boot_timeout}"
                )
            else:
                demo = demo_config(disk, token_secret=DEMO_TOKEN_SECRET)
                say(
                    f"VM demo-vm boots startup.sh from a clone of {REPO} (origin: a local bare "
                    f"copy); it reads its .env secret (a demo job) and, as docs/deploy.md sets it "
                    f"up, the agent's token from the secret {DEMO_TOKEN_SECRET}; running "
                    f"./entrypoint.sh with MODE={mode}"
                )
            emu = Emulator(demo.config, state_dir=base / "emulator")
            extra = {"KEEP_VM": "1"} if keep_running else {}
            return await run(
                emu,
                ["bash", str(REPO / "entrypoint.sh")],
                demo.entrypoint_env(MODE=mode, **extra),
                linger=functools.partial(leave_running, base) if keep_running else None,
            )
    finally:
        if keep:
            print(
                f"demo: kept {base} (serial console: {base}/emulator/instances/"
                "asia-northeast3-c/demo-vm/serial-port-1.log)",
                file=sys.stderr,
            )
        else:
            shutil.rmtree(base, ignore_errors=True)


class ScheduledDemo:
    """demo --scheduled: the chain our users deploy, on this machine. deploy.sh apply onto the
    emulator's private network from an empty project, then N slots fired by Cloud Scheduler,
    each execution shown as an operator sees it (gcloud run jobs executions list, the job's lines
    from Cloud Logging), then deploy.sh destroy --yes --address, also on Ctrl-C. Its exit status
    is 0 only when each slot ran once and succeeded."""

    JOB = "vm-job-runner"

    def __init__(self, slots: int, fast: bool, base: Path) -> None:
        self.slots, self.fast, self.base = slots, fast, base
        self.stop = asyncio.Event()
        self.child: asyncio.subprocess.Process | None = None
        self.dep = deployment(base / "deployment", clock="test" if fast else "real")
        self.emu = Emulator(self.dep.config, state_dir=base / "emulator", private_network=True)
        self.env: dict[str, str] = {}

    def interrupt(self, sig: int) -> None:
        self.stop.set()
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, sig)

    async def sh(self, *argv: str, capture: bool = False) -> tuple[int, str]:
        """argv in the private network (its output ours, or captured): deploy.sh and these
        commands run gcloud run and gcloud scheduler, which resolve names of Google's."""
        if self.emu.net is None:
            raise RuntimeError("demo --scheduled runs its commands only in the private network")
        out = asyncio.subprocess.PIPE if capture else None
        self.child = await asyncio.create_subprocess_exec(
            *self.emu.command(list(argv)), env=self.env, process_group=0, stdout=out
        )
        stdout, _ = await self.child.communicate()
        rc, self.child = self.child.returncode or 0, None
        return rc, (stdout or b"").decode(errors="replace")

    async def executions(self) -> list[dict[str, Any]]:
        rc, out = await self.sh(
            "gcloud", "run", "jobs", "executions", "list", f"--job={self.JOB}",
            f"--region={self.dep.config.region}", "--format=json", capture=True,
        )  # fmt: skip
        return json.loads(out) if rc == 0 and out.strip() else []

    async def show(self, n: int, execution: dict[str, Any]) -> bool:
        """Slot N's execution as an operator reads it; whether it succeeded."""
        name = execution["metadata"]["name"]
        query = f'labels."run.googleapis.com/execution_name"="{name}"'
        _, out = await self.sh(
            "gcloud", "logging", "read", query, "--order=asc", "--limit=1000", "--format=json",
            capture=True,
        )  # fmt: skip
        entries = json.loads(out) if out.strip() else []
        messages = [e.get("jsonPayload", {}).get("message", "") for e in entries]
        said = [m.split("step 1/6: slot ", 1)[1] for m in messages if "step 1/6: slot " in m]
        slot = said[0].split(" ", 1)[0] if said else "?"
        job_lines = [e["textPayload"] for e in entries if e.get("textPayload")]
        ok = bool(execution["status"].get("succeededCount"))
        say(
            f"slot {n}/{self.slots}: {name} {'succeeded' if ok else 'FAILED'} (slot {slot}); "
            f"the job's output, from Cloud Logging:"
        )
        for line in job_lines:
            print(f"  {line}", flush=True)
        return ok

    async def wait_for(self, count: int, since: str) -> list[dict[str, Any]]:
        """The first COUNT executions created after SINCE, once each has ended."""
        while not self.stop.is_set():
            runs = [
                e for e in await self.executions() if e["metadata"]["creationTimestamp"] > since
            ]
            runs.sort(key=lambda e: e["metadata"]["creationTimestamp"])
            if len(runs) >= count and all(e["status"].get("completionTime") for e in runs[:count]):
                return runs[:count]
            await asyncio.sleep(2)
        return []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.interrupt, sig)
        try:
            async with self.emu:
                self.env = {
                    **os.environ,
                    **self.emu.env(),
                    "DEPLOY_ENV": str(self.dep.deploy_env),
                    "CLOUDSDK_CORE_DISABLE_COLOR": "1",
                }
                return await self._deployed()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _deployed(self) -> int:
        say(
            f"deploying onto the emulator from an empty project: ./deploy.sh apply with "
            f"{self.dep.deploy_env} (SCHEDULE every minute, the job {self.dep.job_env})"
        )
        rc, _ = await self.sh("bash", str(REPO / "deploy.sh"), "apply")
        try:
            if rc != 0 or self.stop.is_set():
                say(f"deploy.sh apply exited {rc}")
                return rc or 130
            return await self._slots()
        finally:
            self.stop.clear()
            say("removing the deployment: ./deploy.sh destroy --yes --address")
            await self.sh("bash", str(REPO / "deploy.sh"), "destroy", "--yes", "--address")

    async def _slots(self) -> int:
        # the first run's (in test mode), the newest: slots are what comes after
        since = max(
            (e["metadata"]["creationTimestamp"] for e in await self.executions()), default=""
        )
        ok = True
        for n in range(1, self.slots + 1):
            if self.fast:
                if n > 1:  # the job takes its slot from its own clock: the next minute's
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 60 - time.time() % 60 + 1)
                if self.stop.is_set() or self.emu.cloud is None:
                    return 130
                await self.emu.cloud.scheduler.fire_hook({"job": f"{self.JOB}-slots", "wait": 60})
                say(f"slot {n}/{self.slots}: fired by the test clock")
            else:
                say(f"slot {n}/{self.slots}: waiting for Cloud Scheduler (every minute)")
            runs = await self.wait_for(n, since)
            if self.stop.is_set() or not runs:
                return 130
            ok = await self.show(n, runs[-1]) and ok
        _, table = await self.sh(
            "gcloud", "run", "jobs", "executions", "list", f"--job={self.JOB}",
            f"--region={self.dep.config.region}", capture=True,
        )  # fmt: skip
        say("gcloud run jobs executions list (the last is the first run, in test mode):")
        print(table, end="", flush=True)
        # one execution a slot: none besides them up to the last slot's (a later minute's may come)
        last = runs[-1]["metadata"]["creationTimestamp"]
        made = [
            e for e in await self.executions() if since < e["metadata"]["creationTimestamp"] <= last
        ]
        if len(made) != self.slots or not ok:
            say(f"{len(made)} executions for {self.slots} slots, or one failed: exit 1")
            return 1
        say(f"{self.slots} slots, each ran once and succeeded")
        return 0


async def run_scheduled_demo(slots: int, fast: bool, keep: bool) -> int:
    if (why := namespace.unavailable()) is not None:
        say(f"--scheduled runs gcloud run and gcloud scheduler in a private network: {why}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="vm-job-scheduled-"))
    base.chmod(0o755)
    try:
        return await ScheduledDemo(slots, fast, base).run()
    finally:
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gcp_emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the whole flow here: emulator, startup.sh, entrypoint.sh")
    demo.add_argument("--mode", choices=("run", "test"), default="run")
    demo.add_argument("--keep", action="store_true", help="keep the VM's disk and serial log")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the VM up after the run, for ./entrypoint.sh status and logs, until Ctrl-C",
    )
    demo.add_argument(
        "--vm",
        choices=("process", "qemu"),
        default="process",
        help="process: the guest is a process group (seconds); qemu: a real Debian 12 VM "
        "(root, qemu-system-x86, debootstrap; its first boot takes minutes)",
    )
    demo.add_argument(
        "--scheduled",
        action="store_true",
        help="as root: deploy.sh apply from an empty project, then the scheduler fires --slots",
    )
    demo.add_argument("--slots", type=int, default=2, help="with --scheduled: how many (default 2)")
    demo.add_argument(
        "--fast", action="store_true", help="with --scheduled: the test clock fires the slots"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log lifecycle events")
    for name in ("serve", "run"):
        p = sub.add_parser(name)
        p.add_argument("--config", type=Path, help="TOML file (default: one VM, one address)")
        p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
        p.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
        p.add_argument(
            "--state-dir",
            type=Path,
            help="guest disks and serial logs (default: a temp dir, removed after)",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="log lifecycle events")
        p.add_argument(
            "--private-network",
            action="store_true",
            help="as root: serve, and run CMD, in a network of the emulator's own, where "
            "Google's host names reach the emulator over TLS and nothing else is reachable",
        )
        if name == "run":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s gcp_emulator %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "demo" and args.scheduled:
            if args.slots < 1:
                parser.error("--slots must be 1 or more")
            return asyncio.run(run_scheduled_demo(args.slots, args.fast, args.keep))
        if args.command == "demo":
            return asyncio.run(run_demo(args.mode, args.keep, args.keep_running, args.vm))
        emu = Emulator(
            load_config(args.config),
            port=args.port,
            host=args.host,
            state_dir=args.state_dir,
            private_network=args.private_network,
        )
        if args.command == "serve":
            return asyncio.run(serve(emu))
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not command:
            parser.error("run needs a command: python -m gcp_emulator run -- CMD [ARGS...]")
        words = [w for w in command[1:] if not w.startswith("-") and w not in ("alpha", "beta")]
        direct = Path(command[0]).name == "gcloud" and words[:1] in (["run"], ["scheduler"])
        if direct and not args.private_network:
            parser.error(
                f"gcloud {words[0]} runs only with --private-network: with a loopback endpoint "
                "override it resolves REGION-<the override's host> on this machine's network"
            )
        return asyncio.run(run(emu, command))
    except ConfigError as exc:
        print(f"gcp_emulator: configuration error: {exc}", file=sys.stderr)
        return 2
