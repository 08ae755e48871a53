"""The demo VM: a disk that is a clone of this repository, booted with our startup.sh.

`python -m gcp_emulator demo` (gcp_emulator/cli.py) runs the whole flow over it, in one command.

The emulator boots a VM whose startup-script is our startup.sh, over a disk that is a clone of
this repository (its `origin` a local bare copy of the working tree), with an `app-env` secret
holding a generated token and a demonstration JOB_COMMAND. Then entrypoint.sh attaches the IP,
starts the VM, runs the job, prints its log and stops the VM; the demo exits with its status.

With vm="qemu" (`demo --vm qemu`) the VM is a real one (gcp_emulator/guests/qemu.py): it has
no clone of ours on its disk; startup.sh clones its repo-url at the first boot, as on Compute
Engine, from a git daemon on this host's loopback (GitServer) that the VM reaches at
169.254.169.1, with the settings' defaults for everything else.

The tests and benchmarks boot VMs the same way: snapshot_repo, make_disk, guest_access,
GitServer, demo_config. This module imports nothing of the CLI: the dependency goes cli -> demo.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gcp_emulator.compute.models import SYSTEMD_PATH
from gcp_emulator.config import AddressConfig, EmulatorConfig, InstanceConfig, SecretConfig
from gcp_emulator.guests.qemu import HOST_IP

REPO = Path(__file__).resolve().parent.parent
# A systemd service has no HOSTNAME in its environment (a real VM's agent runs the job with
# none; the process guest sets it): the VM's name is uname's there.
DEMO_JOB = (
    'echo "demo job: hello from ${HOSTNAME:-$(uname -n)}, DRY_RUN=${DRY_RUN:-0},'
    ' EXAMPLE=$EXAMPLE"; sleep 1; echo "demo job: done"'
)


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@localhost",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@localhost",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def snapshot_repo(repo: Path, dest: Path) -> Path:
    """A bare repository at dest whose `main` is one commit of repo's working tree (tracked
    and untracked files, not ignored ones), so the VM runs exactly the code that is here."""
    files = _git("ls-files", "-co", "--exclude-standard", "-z", cwd=repo).split("\0")
    work = dest.parent / f"{dest.name}.work"
    for rel in filter(None, files):
        src = repo / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    _git("init", "--quiet", "--initial-branch=main", str(work))
    _git("add", "--all", cwd=work)
    _git("commit", "--quiet", "-m", "snapshot of the working tree", cwd=work)
    _git("clone", "--quiet", "--bare", str(work), str(dest))
    shutil.rmtree(work)
    return dest


def push_commit(origin: Path, files: dict[str, str], message: str) -> None:
    """Commit files on top of origin's main and push it there (a deploy after the disk was made)."""
    work = origin.parent / f"{origin.name}.push"
    _git("clone", "--quiet", str(origin), str(work))
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    _git("add", "--all", cwd=work)
    _git("commit", "--quiet", "-m", message, cwd=work)
    _git("push", "--quiet", "origin", "main", cwd=work)
    shutil.rmtree(work)


@dataclass
class Disk:
    base: Path  # everything of this VM; world-traversable when we are root
    origin: Path  # the bare repository the VM fetches from
    app: Path  # the checkout, APP_DIR on the VM

    @property
    def tls(self) -> Path:
        """TLS_DIR on the VM: the agent's key, on the disk beside the checkout, not in it."""
        return self.app.parent / "tls"


def make_disk(base: Path, repo: Path = REPO) -> Disk:
    """A VM disk holding a clone of repo, its origin a local bare snapshot."""
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # the agent's user must reach the disk, the origin, uv and python
        base.chmod(0o755)
        private = [p for p in base.resolve().parents if not p.stat().st_mode & stat.S_IXOTH]
        if private:
            raise ValueError(
                f"the agent's user cannot reach {base}: {private[0]} is private "
                "(make it world-traversable, or put the disk elsewhere)"
            )
    origin = snapshot_repo(repo, base / "origin.git")
    app = base / "disk" / "app"
    app.parent.mkdir()
    _git("clone", "--quiet", str(origin), str(app))
    return Disk(base, origin, app)


def _world_usable(path: Path) -> bool:
    """Can any user run this file (every directory above it traversable by others)?"""
    path = path.resolve()
    if not path.is_file() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def _unshimmed(path: str) -> str:
    """pyenv puts a shell script (a shim) on PATH for uv installed with pip; another user cannot
    run it (it reads our ~/.pyenv). The binary it stands for, when pyenv can say."""
    try:
        if Path(path).read_bytes()[:2] != b"#!":
            return path
    except OSError:
        return path
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        r = subprocess.run([pyenv, "which", Path(path).name], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    return path


def guest_access(disk: Disk) -> dict[str, str]:
    """Variables a guest needs so that startup.sh finds uv (a VM image would have it, or
    startup.sh installs it; the guest's PATH is systemd's) and, as root, can run uv and Python
    as the agent's user: a world-runnable uv (copied onto the disk if ours is not) and Python
    3.11+. When we are not root, the guest runs as us."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        raise SystemExit("demo: uv is not on PATH")
    uv = _unshimmed(uv)
    if os.geteuid() != 0:
        return {"PATH": f"{Path(uv).resolve().parent}:{SYSTEMD_PATH}"}
    env: dict[str, str] = {}
    bin_dir = disk.base / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not _world_usable(Path(uv)):
        shutil.copy2(Path(uv).resolve(), bin_dir / "uv")
    env["PATH"] = f"{bin_dir}:{Path(uv).resolve().parent}:{SYSTEMD_PATH}"
    candidates = [Path(sys.executable)] + [Path(f"/usr/bin/python3.{n}") for n in (13, 12, 11)]
    python = next((p for p in candidates if _world_usable(p)), None)
    if python is None:
        raise SystemExit(
            "demo: as root, the agent's user needs a Python 3.11+ outside /root; "
            "install python3 (Debian: apt-get install python3) or run as a user"
        )
    env["UV_PYTHON"] = str(python.resolve())
    # The local origin belongs to us, not to the agent's user: git refuses such a repository
    # unless a global or system config names it safe (-c does not reach the upload-pack of a
    # local fetch). A real VM fetches from a URL, where this does not arise.
    gitconfig = disk.base / "gitconfig"
    gitconfig.write_text(f"[safe]\n\tdirectory = {disk.origin}\n")
    gitconfig.chmod(0o644)
    env["GIT_CONFIG_GLOBAL"] = str(gitconfig)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GitServer:
    """`git daemon` serving the repositories under base, read-only, on 127.0.0.1 at a free
    port: the URL a real VM clones from (a QEMU guest reaches this host's loopback at
    169.254.169.1). Stopped on leaving the `with`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, repo: Path) -> str:
        """The repository's URL as a QEMU guest reaches it."""
        return f"git://{HOST_IP}:{self.port}/{repo.relative_to(self.base)}"

    def __enter__(self) -> GitServer:
        self.port = free_port()
        log = (self.base / "git-daemon.log").open("wb")
        argv = ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}"]
        argv += ["--export-all", "--informative-errors", f"--base-path={self.base}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                text = (self.base / "git-daemon.log").read_text(errors="replace").strip()
                raise RuntimeError(f"git daemon did not listen on 127.0.0.1:{self.port}: {text}")
            time.sleep(0.05)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# seconds for the agent to answer: the process guest boots in seconds; a real VM under TCG
# boots in about 40 s, and its first boot installs git, pip and uv and syncs the dependencies
BOOT_TIMEOUTS = {"process": 180, "qemu": 900}


@dataclass
class Demo:
    config: EmulatorConfig
    token: str
    port: int
    disk: Disk
    boot_timeout: int = BOOT_TIMEOUTS["process"]

    def entrypoint_env(self, **extra: str) -> dict[str, str]:
        inst, addr = self.config.instances[0], self.config.addresses[0]
        return {
            "PROJECT_ID": self.config.project,
            "REGION": self.config.region,
            "ZONE": self.config.zone,
            "INSTANCE": inst.name,
            "STATIC_NAME": addr.name,
            "AGENT_TOKEN": self.token,
            "AGENT_PORT": str(self.port),
            "BOOT_TIMEOUT": str(self.boot_timeout),
            **extra,
        }


def demo_config(
    disk: Disk,
    *,
    secret: str | None = None,
    token_secret: str | None = None,
    job: str = DEMO_JOB,
    metadata: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    address: str | None = None,
    boot_delay: float = 1.0,
    missing_commands: list[str] | None = None,
    script_runner: str = "guest-agent",
    idle_shutdown: str | None = "600",
    repo_url: str | None = None,
) -> Demo:
    """One VM booting startup.sh over disk, one static address, the app-env secret (with the
    agent's token in it, or, with token_secret, the token in a secret of that name that the VM's
    token-secret names, as docs/deploy.md sets it up). Its
    addresses are 127.NET.77.7 (static) and 127.NET.100.2 (internal) for a NET of its own, so
    demos and tests running at once never share one. With repo_url the VM is a real one (a QEMU
    guest) that clones repo_url at its first boot, with startup.sh's defaults for its
    directories; else a process guest over disk.app."""
    vm = "qemu" if repo_url is not None else "process"
    boot_timeout = BOOT_TIMEOUTS[vm]
    if repo_url is not None:
        where = {"repo-url": repo_url}
        guest_env: dict[str, str] = {}
    else:
        where = {"app-dir": str(disk.app), "tls-dir": str(disk.tls)}
        guest_env = guest_access(disk)
    net = secrets.randbelow(254) + 1
    address = address or f"127.{net}.77.7"
    token = secrets.token_urlsafe(24)
    port = free_port()
    cfg = EmulatorConfig(project="demo-project", region="asia-northeast3", zone="asia-northeast3-c")
    cfg.instances.append(
        InstanceConfig(
            name="demo-vm",
            zone=cfg.zone,
            workdir=disk.base / "disk",
            network_ip=f"127.{net}.100.2",
            boot_delay=boot_delay,
            # the guard docs/deploy.md sets: BOOT_TIMEOUT + RUN_TIMEOUT + STOP_TIMEOUT + 60 s
            max_run_duration=boot_timeout + 3600 + 180 + 60,
            metadata={
                "startup-script": (REPO / "startup.sh").read_text(),
                **where,
                "env-secret": "app-env",
                "agent-port": str(port),
                "enable-guest-attributes": "TRUE",
                **({"token-secret": token_secret} if token_secret else {}),
                **(metadata or {}),
            },
            env={**guest_env, **(env or {})},
            missing_commands=list(missing_commands or []),
            script_runner=script_runner,
            guest=vm,
        )
    )
    cfg.addresses.append(AddressConfig(name="demo-ip", region=cfg.region, address=address))
    if secret is None:
        secret = (
            ("" if token_secret else f"AGENT_TOKEN={token}\n")
            + f"JOB_COMMAND={job}\nEXAMPLE=from-secret-manager\n"
            + (f"IDLE_SHUTDOWN={idle_shutdown}\n" if idle_shutdown is not None else "")
        )
    cfg.secrets.append(SecretConfig(name="app-env", versions=[secret.encode()]))
    if token_secret:
        cfg.secrets.append(SecretConfig(name=token_secret, versions=[token.encode()]))
    return Demo(cfg, token, port, disk, boot_timeout)


# -- a deployment from an empty project (deploy.sh) ----------------------------------------------


@dataclass
class Deployment:
    """What `deploy.sh apply` needs to deploy onto the emulator from an empty project: the
    emulator's configuration (no API enabled, no VM, no address), deploy.env and the job's
    .env file, and the disk the VM it creates boots from."""

    config: EmulatorConfig
    deploy_env: Path
    job_env: Path
    disk: Disk

    def settings(self, **changes: str) -> None:
        """deploy.env with CHANGES (KEY=value) made to it."""
        lines = self.deploy_env.read_text().splitlines()
        for key, value in changes.items():
            lines = [ln for ln in lines if not ln.startswith(f"{key}=")] + [f"{key}={value}"]
        self.deploy_env.write_text("\n".join(lines) + "\n")


def deployment(
    base: Path,
    *,
    schedule: str = "* * * * *",
    time_zone: str = "Asia/Seoul",
    job: str = DEMO_JOB,
    clock: str = "test",
    settings: dict[str, str] | None = None,
) -> Deployment:
    """A deployment's inputs under base: the VM's disk (a checkout of this repository whose
    origin is a bare snapshot, REPO_URL, with its .venv already synced: the emulator's private
    network reaches no package index, so the boot's `uv sync --frozen` finds nothing to fetch),
    deploy.env (short timeouts, SCHEDULE and TIME_ZONE, the test clock) and job.env (JOB_COMMAND
    job). A VM that deploy.sh creates boots our startup.sh as a process guest over that disk."""
    disk = make_disk(base / "vm")
    access = guest_access(disk)
    python = access.get("UV_PYTHON", sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run(
        [_unshimmed(shutil.which("uv") or "uv"), "sync", "--frozen", "--no-dev", "--quiet"],
        cwd=disk.app,
        env={**env, "UV_PYTHON": python},
        check=True,
    )
    cfg = EmulatorConfig(
        project="deploy-project",
        region="asia-northeast3",
        zone="asia-northeast3-c",
        services=[],
        scheduler_clock=clock,
        guest_env={**access, "APP_DIR": str(disk.app), "TLS_DIR": str(disk.tls)},
    )
    job_env = base / "job.env"
    job_env.write_text(f"JOB_COMMAND={job}\nEXAMPLE=from-secret-manager\n")
    values = {
        "PROJECT_ID": cfg.project,
        "REGION": cfg.region,
        "ZONE": cfg.zone,
        "REPO_URL": str(disk.origin),
        "SCHEDULE": schedule,
        "TIME_ZONE": time_zone,
        "JOB_ENV_FILE": str(job_env),
        "BOOT_TIMEOUT": "60",
        "RUN_TIMEOUT": "300",
        "STOP_TIMEOUT": "60",
        "FIRST_BOOT_TIMEOUT": "120",
        "ALERT_EMAIL": "ops@example.com",  # the emulator records the e-mail, sends nothing
        # a slot a minute leaves no room for a check of each (deploy/check_schedule.py): on the
        # test clock one is deployed and fires only when a test fires it; none on the real clock
        "CHECK_SCHEDULE": "30 3 * * *" if clock == "test" else "none",
        **(settings or {}),
    }
    deploy_env = base / "deploy.env"
    deploy_env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return Deployment(cfg, deploy_env, job_env, disk)
