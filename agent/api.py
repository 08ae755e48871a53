"""The agent's HTTP API (docs/agent.md, "The API").

`GET /` is open and says nothing secret; every other route needs `Authorization: Bearer
$AGENT_TOKEN`, compared in constant time. `create_app(settings)` builds the app, so tests can
hand it their own settings; `fastapi_app.py` builds it from the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, StringConstraints, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.runner import BusyError, JobRunner, KeyConflict, StoreError, TooLate
from agent.settings import MAX_WAIT_SECONDS, Settings, project_version
from agent.store import (
    RunRecord,
    RunStore,
    StateDirBusy,
    is_valid_run_id,
    lock_state_dir,
    log_size,
    read_log_range,
    read_log_tail,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
BODY_TIMEOUT = 10.0  # seconds between two parts of a request body before 408
MAX_LOG_BYTES = 4 * 1024 * 1024
LOG_CHUNK_BYTES = 1024 * 1024  # at most this much per answer when following a log
LOG_POLL_SECONDS = 0.05  # how often a held log request looks for new bytes
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")
RUN_SLOT_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?([+-]\d\d:\d\d|Z)$"


# -- public models ---------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    busy: bool


class RunCreate(BaseModel):
    mode: Literal["run", "test"]
    # the scheduled slot the run is for (ISO 8601 with its offset), given to the job as RUN_SLOT
    run_slot: Annotated[str, StringConstraints(pattern=RUN_SLOT_PATTERN)] | None = None
    # a key whose earlier run failed, was cancelled or interrupted starts the job again only
    # with this (the orchestrator's RERUN_FAILED=1: the job is safe to run twice)
    rerun_failed: bool = False
    # the latest time a new run may start (the slot's START_DEADLINE): after it, 412 and no
    # run; a run given back for the key is answered as ever
    start_by: AwareDatetime | None = None


class RunPublic(BaseModel):
    id: str
    mode: str
    status: str
    exit_code: int | None
    error: str | None
    started_at: str
    finished_at: str | None
    idempotency_key: str | None

    @classmethod
    def of(cls, rec: RunRecord) -> RunPublic:
        return cls(
            id=rec.id,
            mode=rec.mode,
            status=rec.status,
            exit_code=rec.exit_code,
            error=rec.error,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            idempotency_key=rec.idempotency_key,
        )


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


class SyncResult(BaseModel):
    status: Literal["ok"]
    message: str
    run: RunPublic


# -- plumbing --------------------------------------------------------------------------------


class BodySizeLimit:
    """Answer 413 to a request body over max_bytes before any handler sees it. The bytes that
    arrive are counted, whatever Content-Length says (a request may declare a small length and
    stream a chunked body)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        # Read the body here, counting what arrives, then replay it to the app.
        body, more = b"", True
        while more:
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT)
            except TimeoutError:
                response = JSONResponse(
                    {"detail": f"request body not received within {BODY_TIMEOUT:g} s"},
                    status_code=status.HTTP_408_REQUEST_TIMEOUT,
                )
                await response(scope, receive, send)
                return
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body too large (limit {self.max_bytes} bytes)"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        await response(scope, receive, send)


def short_validation_detail(errors: list[Any]) -> str:
    """`invalid request: body.mode: Input should be 'run' or 'test'`, from pydantic's errors."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    msg = first.get("msg", "invalid")
    return f"invalid request: {where}: {msg}" if where else f"invalid request: {msg}"


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


RunnerDep = Annotated[JobRunner, Depends(get_runner)]
_bearer = HTTPBearer(auto_error=False, description="AGENT_TOKEN")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries `Authorization: Bearer $AGENT_TOKEN`."""
    settings: Settings = request.app.state.settings
    expected = settings.agent_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    get_runner(request).touch()


def checked_run_id(run_id: str) -> str:
    if not is_valid_run_id(run_id):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "malformed run id: ids are 32 lowercase hex characters"
        )
    return run_id


RunId = Annotated[str, Depends(checked_run_id)]


def store_error(exc: StoreError) -> str:
    return f"the agent cannot write its run records ({exc}): free space on the VM's disk"


def record_or_404(rec: RunRecord | None) -> RunRecord:
    if rec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "run not found")
    return rec


def busy_response(exc: BusyError, **extra: str) -> JSONResponse:
    return JSONResponse(
        {
            **extra,
            "detail": f"another run is in progress ({exc.run_id}); wait for it or cancel it",
            "run_id": exc.run_id,
        },
        status_code=status.HTTP_409_CONFLICT,
    )


# -- routes ----------------------------------------------------------------------------------

open_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)])


@open_router.get("/", response_model=Health)
def health(request: Request, runner: RunnerDep) -> Health:
    """Health check: open, and says nothing secret."""
    return Health(status="ok", version=request.app.state.version, busy=runner.busy)


@router.post(
    "/runs",
    response_model=RunPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": RunPublic, "description": "replay of an earlier run"},
        409: {"description": "another run is in progress"},
        412: {"description": "a new run would start after start_by"},
    },
)
async def create_run(
    request: Request,
    runner: RunnerDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Any:
    """Start a run in the background; the same Idempotency-Key returns the earlier run."""
    raw = await request.body()
    try:
        body = RunCreate.model_validate_json(raw or b"null")
    except ValidationError as exc:
        if not raw.strip():
            detail = 'body must be JSON: {"mode": "run"} or {"mode": "test"}'
        else:
            detail = short_validation_detail(exc.errors())
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from None
    if idempotency_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "Idempotency-Key must be 1 to 200 printable ASCII characters",
        )
    try:
        rec, created = await runner.start(
            body.mode,
            idempotency_key,
            run_slot=body.run_slot,
            rerun_failed=body.rerun_failed,
            start_by=body.start_by,
        )
    except BusyError as exc:
        return busy_response(exc)
    except TooLate as exc:
        raise HTTPException(status.HTTP_412_PRECONDITION_FAILED, str(exc)) from None
    except KeyConflict as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except StoreError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, store_error(exc)) from None
    return JSONResponse(
        RunPublic.of(rec).model_dump(),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
    )


@router.get("/runs", response_model=RunsPublic)
def list_runs(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> RunsPublic:
    """Recent runs, newest first."""
    runs = [RunPublic.of(r) for r in request.app.state.runner.recent(limit)]
    return RunsPublic(data=runs, count=len(runs))


@router.get("/runs/{run_id}", response_model=RunPublic)
async def get_run(
    run_id: RunId,
    runner: RunnerDep,
    wait: Annotated[
        float, Query(ge=0, description=f"long poll, capped at {MAX_WAIT_SECONDS:g} s")
    ] = 0,
) -> RunPublic:
    """The run's record; with `wait=S`, answers when the run ends or after S seconds."""
    rec = record_or_404(runner.get(run_id))
    if wait > 0 and rec.status == "running":
        rec = record_or_404(await runner.wait(run_id, min(wait, MAX_WAIT_SECONDS)))
    return RunPublic.of(rec)


@router.get("/runs/{run_id}/log", response_class=PlainTextResponse)
async def get_run_log(
    run_id: RunId,
    request: Request,
    runner: RunnerDep,
    offset: Annotated[int | None, Query(ge=0, description="follow from this byte")] = None,
    wait: Annotated[
        float,
        Query(ge=0, description=f"with offset: hold for new bytes, <= {MAX_WAIT_SECONDS:g} s"),
    ] = 0,
) -> Response:
    """The job's combined stdout and stderr. Without `offset`: its last 4 MiB (or LOG_MAX_BYTES
    if less) as text. With `offset=N`: the bytes from N on (at most 1 MiB), `X-Next-Offset` and
    `X-Run-Status` in the headers; with `wait=S`, held until there are new bytes, the run ends,
    or S seconds pass. Bytes no longer kept (LOG_MAX_BYTES) are skipped, and `X-Log-Skipped`
    says how many."""
    store: RunStore = request.app.state.store
    settings: Settings = request.app.state.settings
    record_or_404(store.get(run_id))
    window = min(MAX_LOG_BYTES, settings.log_max_bytes)
    path = store.log_path(run_id)
    if offset is None:
        data, start = read_log_tail(path, window)
        text = data.decode("utf-8", "replace")
        if start:
            text = (
                f"[… the first {start} bytes of this log are not kept (LOG_MAX_BYTES) …]\n" + text
            )
        return PlainTextResponse(text)
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    while True:
        status_now = record_or_404(runner.get(run_id)).status  # before the bytes: none is missed
        size = log_size(path)
        if offset > size:
            raise HTTPException(
                status.HTTP_416_RANGE_NOT_SATISFIABLE,
                f"offset {offset} is past the end of the log ({size} bytes)",
            )
        if size > offset or status_now != "running" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(LOG_POLL_SECONDS)
    start = max(offset, size - window)
    data = read_log_range(path, start, min(size - start, LOG_CHUNK_BYTES))
    return Response(
        data,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Next-Offset": str(start + len(data)),
            "X-Run-Status": status_now,
            "X-Log-Skipped": str(start - offset),
        },
    )


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
async def cancel_run(run_id: RunId, runner: RunnerDep) -> RunPublic:
    """Stop every process of the run (SIGTERM, then SIGKILL); a no-op on an ended run."""
    record_or_404(runner.get(run_id))
    return RunPublic.of(record_or_404(await runner.cancel(run_id)))


async def run_to_the_end(runner: JobRunner, mode: str) -> Any:
    try:
        rec, _ = await runner.start(mode, None)
    except BusyError as exc:
        return busy_response(exc, status="error")
    except StoreError as exc:
        return JSONResponse(
            {"status": "error", "detail": store_error(exc)},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    rec = record_or_404(await runner.wait(rec.id, None))
    if rec.status != "succeeded":
        return JSONResponse(
            {
                "status": "error",
                "detail": rec.error or rec.status,
                "run": RunPublic.of(rec).model_dump(),
            },
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    return SyncResult(status="ok", message=f"{mode}() executed", run=RunPublic.of(rec))


@router.get("/run", response_model=SyncResult)
async def run_sync(runner: RunnerDep) -> Any:
    """Run the job to the end (the seed's synchronous call): 200 ok or 500 error."""
    return await run_to_the_end(runner, "run")


@router.get("/test", response_model=SyncResult)
async def test_sync(runner: RunnerDep) -> Any:
    """Run the job in test mode (DRY_RUN=1) to the end: 200 ok or 500 error."""
    return await run_to_the_end(runner, "test")


# -- the app ---------------------------------------------------------------------------------


def stop_job_on_sigterm(runner: JobRunner) -> Callable[[], None]:
    """On the agent's SIGTERM (the VM's shutdown: systemd stops the unit, KillMode=mixed, so only
    the agent gets it), a run still going is ended at once, with the job's one SIGTERM and its
    KILL_GRACE, while uvicorn closes its connections, not after them. Chained in front of
    uvicorn's own handler (installed before the lifespan starts); returns what undoes it. A no-op
    off the main thread (a TestClient), where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    tasks: set[asyncio.Task[None]] = set()

    def end_the_run() -> None:
        task = loop.create_task(runner.shutdown())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(end_the_run)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


def create_app(
    settings: Settings, job_env: dict[str, str] | None = None, job_argv: list[str] | None = None
) -> FastAPI:
    """The agent, configured by settings; job_env adds variables for the job (from .env)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            lock = lock_state_dir(settings.state_dir)  # first: before recovery touches a run
        except StateDirBusy as exc:
            logger.error("%s", exc)
            raise
        store = RunStore(settings.state_dir)
        runner = JobRunner(settings, store, job_env, job_argv)
        await runner.recover()
        runner.prune()
        app.state.store, app.state.runner = store, runner
        watchdog = asyncio.create_task(runner.idle_watchdog())
        undo_sigterm = stop_job_on_sigterm(runner)
        logger.info(
            "agent %s ready: state in %s, idle shutdown %s",
            app.state.version,
            settings.state_dir.resolve(),
            f"after {settings.idle_shutdown:g} s idle (IDLE_SHUTDOWN), then"
            f" {settings.shutdown_command!r}"
            if settings.idle_shutdown
            else "off (IDLE_SHUTDOWN unset or 0; on a VM, startup.sh turns it on)",
        )
        try:
            yield
        finally:
            undo_sigterm()
            watchdog.cancel()
            await runner.shutdown()
            store.close()
            os.close(lock)

    # No /docs, /redoc or /openapi.json: every route but health needs the token (docs/agent.md).
    app = FastAPI(
        title="VM job agent",
        version=project_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.version = app.version

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": short_validation_detail(list(exc.errors()))},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    app.include_router(open_router)
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    return app
