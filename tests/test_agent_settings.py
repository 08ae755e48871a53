"""The agent's settings as an operator writes them: `.env` read as written (a `${VAR}` reaches
the job's shell unexpanded), and the idle shutdown off unless it is set (it is the VM's safety
net, turned on by startup.sh there), saying which at start-up."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from agent.api import create_app
from agent.settings import Settings, job_environment
from tests.conftest import TOKEN

JOB = 'echo "trading, dry run: ${DRY_RUN:-0}, home: $HOME" > "${OUT:-/dev/null}"'


def test_dotenv_values_are_read_as_written_not_expanded(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(f"AGENT_TOKEN={TOKEN}\nJOB_COMMAND={JOB}\nIDLE_SHUTDOWN=120\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JOB_COMMAND", raising=False)
    monkeypatch.delenv("IDLE_SHUTDOWN", raising=False)
    settings = Settings()
    assert settings.job_command == JOB, "the agent expanded ${VAR} in .env"
    assert settings.idle_shutdown == 120
    assert job_environment()["JOB_COMMAND"] == JOB, "the job was given an expanded command"


def test_the_environment_still_wins_over_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(f"AGENT_TOKEN={TOKEN}\nIDLE_SHUTDOWN=120\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IDLE_SHUTDOWN", "30")
    assert Settings().idle_shutdown == 30


def test_without_a_dotenv_file_nothing_is_read_from_it(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("AGENT_TOKEN=from-a-file-that-is-switched-off\n")
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None, agent_token=TOKEN)  # type: ignore[call-arg]
    assert settings.agent_token.get_secret_value() == TOKEN


def test_idle_shutdown_is_off_unless_set_and_the_start_up_log_says_so(tmp_path, caplog):
    settings = Settings(_env_file=None, agent_token=TOKEN, state_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.idle_shutdown == 0, "a laptop running the agent would power itself off"
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)):
        pass
    ready = [r.getMessage() for r in caplog.records if " ready: " in r.getMessage()]
    assert ready and "idle shutdown off (IDLE_SHUTDOWN unset or 0" in ready[0], ready


def test_a_set_idle_shutdown_is_named_at_start_up_with_its_command(tmp_path, caplog):
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, agent_token=TOKEN, state_dir=tmp_path, idle_shutdown=900
    )
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)):
        pass
    ready = [r.getMessage() for r in caplog.records if " ready: " in r.getMessage()]
    assert ready and "idle shutdown after 900 s idle (IDLE_SHUTDOWN), then 'poweroff'" in ready[0]
