"""Cloud Run jobs: jobs, executions and their tasks, run in containers on this machine."""
