"""The agent that runs on the VM: `uvicorn fastapi_app:app --host 0.0.0.0 --port 8000`.

Settings come from the environment, then `.env` in the working directory (README.md, "Agent
settings"); a missing or short AGENT_TOKEN stops it here with one line and exit code 2. The
routes live in agent/api.py, the settings in agent/settings.py, the run records in
agent/store.py, the child process in agent/runner.py.
"""

from agent.api import create_app
from agent.settings import job_environment, load_settings_or_exit

app = create_app(load_settings_or_exit(), job_env=job_environment())
