"""orchestrator/token.sh on its own: the agent's token read again from its secret after a
rotation, from Secret Manager's answer as Google writes it (indented JSON), with curl stubbed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

OLD = "the-token-this-execution-started-with"
NEW = "the-token-of-the-newest-version-000"

# curl as the module calls it: the answer's body to -o FILE, its HTTP status from -w on stdout
CURL = """#!/usr/bin/env python3
import sys
args = sys.argv[1:]
with open(args[args.index("-o") + 1], "w") as out:
    out.write(open(sys.argv[0] + ".body").read())
print(open(sys.argv[0] + ".status").read().strip(), end="")
"""

SCRIPT = """
set -Eeuo pipefail
for m in json logging children compute token; do source "$ORCHESTRATOR/$m.sh"; done
need_token() { :; }
WORK_DIR=$1 PROJECT_ID=p SECRETMANAGER_API=https://secretmanager.googleapis.com/
AGENT_TOKEN_SECRET=agent-token
rc=0
renew_agent_token || rc=$?
echo "rc=$rc"
"""


def renew(tmp_path: Path, status: int, body: str) -> tuple[int, str, str]:
    """renew_agent_token's result, the header file it leaves, and its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"
    curl.write_text(CURL)
    curl.chmod(0o755)
    Path(f"{curl}.body").write_text(body)
    Path(f"{curl}.status").write_text(str(status))
    work = tmp_path / "work"
    work.mkdir()
    (work / "auth").write_text(f"Authorization: Bearer {OLD}\n")
    (work / "api-auth").write_text("Authorization: Bearer access-token\n")
    r = subprocess.run(
        ["bash", "-c", SCRIPT, "bash", str(work)],
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "ORCHESTRATOR": str(REPO / "orchestrator"),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.startswith("rc="), r.stderr
    return int(r.stdout.strip()[3:]), (work / "auth").read_text(), r.stderr


def access_answer(token: str) -> str:
    """Secret Manager's versions.access answer, indented as Google's front end writes it."""
    data = base64.b64encode(token.encode()).decode()
    name = "projects/123/secrets/agent-token/versions/2"
    return json.dumps({"name": name, "payload": {"data": data, "dataCrc32c": "1"}}, indent=2)


def test_a_newer_token_in_googles_indented_answer_replaces_the_one_held(tmp_path):
    rc, auth, log = renew(tmp_path, 200, access_answer(NEW))
    assert rc == 0, log
    assert auth == f"Authorization: Bearer {NEW}\n"
    assert NEW not in log and OLD not in log, "a token reached the log"


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (200, access_answer(OLD), "is the token this execution holds"),
        (200, access_answer("short"), "does not hold a token"),
        (
            403,
            json.dumps(
                {"error": {"code": 403, "message": "Permission denied on secret agent-token."}},
                indent=2,
            ),
            "HTTP 403: Permission denied on secret agent-token. (the job's account needs",
        ),
    ],
)
def test_an_answer_that_brings_no_newer_token_leaves_the_one_held(tmp_path, status, body, said):
    rc, auth, log = renew(tmp_path, status, body)
    assert rc == 1
    assert auth == f"Authorization: Bearer {OLD}\n", "the token held is kept"
    assert said in log, log
