"""The job itself. The agent runs it as `python main.py` (mode run) or `python main.py --test`.

As shipped, `run()` executes the shell command in JOB_COMMAND with `/bin/sh -c`, and exports
DRY_RUN=1 to it in test mode. The command runs in the project's environment, as after
`source .venv/bin/activate`: `python` is the project's, with its locked dependencies (what you
`uv add`), so `JOB_COMMAND='python -m my_trading.run'` runs your package from the checkout. To
put your own logic here instead, replace the body of `run()`:

    def run(test: bool = False) -> None:
        client = Exchange(api_key=os.environ["EXCHANGE_KEY"])  # values from .env reach you
        if test:
            ...  # check connectivity and balances, place no orders
        else:
            ...  # the real work

Return normally for success; raise an exception (or call `sys.exit(code)`) for failure. The
exit code, and the last line you print, reach the run's record and the orchestrator. Print
freely: stdout and stderr go to the run's log (`GET /runs/{id}/log`). On cancel or timeout the
process gets SIGTERM, then SIGKILL after KILL_GRACE seconds.

Each run gets RUN_KEY in its environment: with the orchestrator's SCHEDULE, the scheduled slot
and the task index (`2026-12-02T00:00Z/0`), the same for every duplicate and retry of that slot;
and RUN_SLOT, the slot's time (`2026-12-02T09:00:00+09:00`). Derive your order IDs from it, so
that an exchange refuses an order placed twice for one slot:

    import hashlib
    key = os.environ["RUN_KEY"]
    client_order_id = hashlib.sha256(f"{key}/buy-AAPL".encode()).hexdigest()[:32]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


class JobError(Exception):
    """The job failed; `exit_code` is what the process exits with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CommandFailed(JobError):
    """JOB_COMMAND exited non-zero. Its own output says why, so the CLI adds nothing to it:
    the last line of the log stays the command's, and the agent quotes it in the run's error."""


def _outlive_the_command() -> None:
    """The agent signals the whole process group, so the command gets SIGTERM itself. This
    process stays until the command ends (a no-op handler, unlike SIG_IGN, is not inherited),
    so the run ends when the command does, after any clean-up it does in its grace period."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)


def project_environment(env: dict[str, str]) -> dict[str, str]:
    """env as a virtual environment's activation leaves it: this interpreter's environment (the
    project's .venv, which the agent runs from) first on PATH, VIRTUAL_ENV set. The agent's own
    PATH (systemd's default on a VM) has no `python` at all on Debian 12."""
    bin_dir = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath)
    if sys.prefix != sys.base_prefix:  # a virtual environment
        env["VIRTUAL_ENV"] = sys.prefix
    env.pop("PYTHONHOME", None)
    env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    return env


def run(test: bool = False) -> None:
    """Run the job once; `test=True` must not touch anything real (DRY_RUN=1)."""
    command = os.environ.get("JOB_COMMAND", "").strip()
    if not command:
        raise JobError(
            "JOB_COMMAND is not set: set it (in the environment or the agent's .env) to the"
            " shell command to run, or replace run() in main.py with your own logic",
            exit_code=2,
        )
    env = project_environment(dict(os.environ))
    if test:
        env["DRY_RUN"] = "1"
    else:
        env.pop("DRY_RUN", None)
    _outlive_the_command()
    rc = subprocess.call(["/bin/sh", "-c", command], env=env)
    if rc != 0:
        how = f"exit code {rc}" if rc > 0 else f"signal {signal.Signals(-rc).name}"
        raise CommandFailed(f"JOB_COMMAND failed with {how}", exit_code=rc if rc > 0 else 128 - rc)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the job once.")
    parser.add_argument("--test", action="store_true", help="test mode: DRY_RUN=1, no real work")
    args = parser.parse_args(argv)
    try:
        run(test=args.test)
    except CommandFailed as exc:
        return exc.exit_code
    except JobError as exc:
        print(f"main.py: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
