"""The agent's insides; `fastapi_app.py` beside this package is what uvicorn runs.

- `settings.py`: the settings (environment, then `.env`), checked at start-up.
- `api.py`: the HTTP API: routes, auth, public models, `create_app`.
- `runner.py`: the job as a child process: one run at a time, timeout, cancel, idle shutdown.
- `store.py`: run records in SQLite and the runs' log files, under STATE_DIR; the lock on it.
- `connections.py`: the uvicorn protocol startup.sh names (`--http`): a deadline for each
  request's headers and a cap on open connections.
"""
