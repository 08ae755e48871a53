"""The agent's settings: environment first, then `.env` in the working directory, then defaults.

`.env` is read as written: a value is taken literally, and a `${VAR}` in it is left for the job's
shell to expand when the job runs (so `JOB_COMMAND=echo ${DRY_RUN:-0}` sees test mode's DRY_RUN=1).

Every setting is documented in docs/agent.md ("Agent settings"). A missing or short `AGENT_TOKEN`
stops the agent at start-up with one line on stderr and exit code 2, never at the first request.
"""

from __future__ import annotations

import logging
import re
import sys
import tomllib
from pathlib import Path
from typing import Annotated

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# The checkout: fastapi_app.py, main.py and pyproject.toml, one level above this package.
APP_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = Path(".env")
MIN_TOKEN_LENGTH = 16
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # what a Bearer credential can carry
# Longest a `GET /runs/{id}?wait=S` long poll is held, in seconds; a larger S is capped to this.
MAX_WAIT_SECONDS = 60.0


def project_version() -> str:
    """Version from pyproject.toml beside this file ("unknown" when it cannot be read)."""
    try:
        with (APP_DIR / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


class Settings(BaseSettings):
    """The agent's configuration; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore")

    agent_token: SecretStr
    job_command: str | None = None
    job_timeout: Annotated[float, Field(gt=0)] = 3600.0
    state_dir: Path = Path("state")
    # off unless set: the safety net belongs to the VM, where startup.sh turns it on (a laptop
    # running the agent must not power itself off after 15 idle minutes)
    idle_shutdown: Annotated[float, Field(ge=0)] = 0.0
    shutdown_command: str = "poweroff"
    kill_grace: Annotated[float, Field(gt=0)] = 5.0
    log_max_bytes: Annotated[int, Field(ge=64 * 1024)] = 10 * 1024 * 1024
    keep_runs: Annotated[int, Field(ge=1)] = 500
    keep_days: Annotated[float, Field(gt=0)] = 90.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment, then `.env` as written (pydantic-settings would expand `${VAR}`)."""
        env_file = getattr(dotenv_settings, "env_file", None)  # `_env_file=None` turns it off
        values = env_file_values(Path(env_file)) if isinstance(env_file, str | Path) else {}
        fields = {name.upper(): name for name in settings_cls.model_fields}
        literal = {fields[k.upper()]: v for k, v in values.items() if k.upper() in fields}
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=literal)

    @field_validator("agent_token")
    @classmethod
    def token_usable(cls, v: SecretStr) -> SecretStr:
        token = v.get_secret_value()
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
        if not TOKEN_CHARS.fullmatch(token):
            raise ValueError(
                "must be printable ASCII with no spaces (as a bearer token travels); check"
                " the secret for a stray newline, space or non-ASCII character"
            )
        return v


def describe_error(exc: ValidationError) -> str:
    """One line naming each bad setting, without echoing its value (it may be a secret)."""
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        msg = (
            "is required" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
        )
        parts.append(f"{name} {msg}")
    return "; ".join(parts)


def env_file_values(env_file: Path = ENV_FILE) -> dict[str, str]:
    """`.env` as written: each value literally, no `${VAR}` expanded (the job's shell does that)."""
    if not env_file.is_file():
        return {}
    return {k: v for k, v in dotenv_values(env_file, interpolate=False).items() if v is not None}


def job_environment(env_file: Path = ENV_FILE) -> dict[str, str]:
    """Variables from `.env` that the job should see too (the environment still wins)."""
    return env_file_values(env_file)


def load_settings_or_exit() -> Settings:
    """Read the settings; on a bad one print one line to stderr and exit with status 2."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        return Settings()
    except ValidationError as exc:
        print(f"agent: configuration error: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
