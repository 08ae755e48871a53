"""main.py on its own: `python main.py [--test]`, as the agent runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def run_main(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("JOB_COMMAND", "DRY_RUN")}
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_job_command_it_says_what_to_set_and_exits_2():
    proc = run_main()
    assert proc.returncode == 2
    assert "JOB_COMMAND is not set" in proc.stderr
    assert "replace run() in main.py" in proc.stderr


def test_test_flag_exports_dry_run_to_the_command():
    assert run_main("--test", JOB_COMMAND='echo "dry=$DRY_RUN"').stdout == "dry=1\n"
    assert run_main(JOB_COMMAND='echo "dry=${DRY_RUN:-unset}"', DRY_RUN="1").stdout == "dry=unset\n"


def test_the_command_exit_code_is_the_process_exit_code():
    proc = run_main(JOB_COMMAND="echo why >&2; exit 7")
    assert proc.returncode == 7
    assert proc.stderr == "why\n", "main.py adds nothing after the command's own last line"


def test_the_command_runs_in_the_projects_environment_with_its_python_first_on_path():
    """On the VM the agent's PATH is systemd's, with no `python` (Debian 12): a JOB_COMMAND such
    as `python -m my_trading.run` must find the project's interpreter and its dependencies."""
    proc = run_main(
        JOB_COMMAND='python -c "import sys, pydantic_settings; print(sys.prefix)"; '
        'echo "venv=$VIRTUAL_ENV"',
        PATH="/usr/bin:/bin",
    )
    assert proc.returncode == 0, proc.stderr
    prefix, venv = proc.stdout.splitlines()
    assert prefix == sys.prefix, "the job's python is the one main.py runs on"
    assert venv == f"venv={sys.prefix}"
