"""The emulator's HTTP front: one ASGI app for every service, on the emulator's ports: routing
(core/routing.py), authentication, faults, the journal, and the test hooks under /_emulator/.

Each API call has a name (`compute.instances.start`, `secretmanager.versions.access`, ...)
used by the journal and by fault injection. Errors take the shape of the API they imitate
(core/errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

# every service's routes, registered as their modules load
from gcp_emulator.artifactregistry import responses as _artifactregistry  # noqa: F401
from gcp_emulator.cloudbuild import responses as _cloudbuild  # noqa: F401
from gcp_emulator.compute import responses as _compute  # noqa: F401
from gcp_emulator.compute.capacity import CODES as CAPACITY_CODES
from gcp_emulator.compute.capacity import Stockout
from gcp_emulator.compute.models import Instance
from gcp_emulator.compute.permissions import REQUIRED as COMPUTE_REQUIRED
from gcp_emulator.compute.permissions import check as compute_permissions
from gcp_emulator.compute.permissions import resource_of
from gcp_emulator.core import clock
from gcp_emulator.core.errors import ApiError, error_response, fault_error
from gcp_emulator.core.routing import RouteDef, json_body, match
from gcp_emulator.core.state import Cloud
from gcp_emulator.core.util import fingerprint, now_rfc3339, stamp
from gcp_emulator.iam import responses as _iam  # noqa: F401
from gcp_emulator.logging import responses as _logging  # noqa: F401
from gcp_emulator.metadata import responses as _metadata  # noqa: F401
from gcp_emulator.monitoring import responses as _monitoring  # noqa: F401
from gcp_emulator.run import responses as _run  # noqa: F401
from gcp_emulator.scheduler import responses as _scheduler  # noqa: F401
from gcp_emulator.scheduler.models import parse_time
from gcp_emulator.secretmanager import responses as _secretmanager  # noqa: F401
from gcp_emulator.secretmanager.models import Secret
from gcp_emulator.serviceusage import responses as _serviceusage  # noqa: F401
from gcp_emulator.storage import responses as _storage  # noqa: F401

logger = logging.getLogger(__name__)


@dataclass
class Fault:
    status: int | None
    count: int  # how many calls it still affects; -1: every call
    delay: float
    message: str


class LengthRequired(Exception):
    """A POST without Content-Length: Google's front end refuses it over HTTP/1.1."""


# Google's front end answers a POST without Content-Length (HTTP/1.1) with HTTP 411 and an HTML
# page of its own, not the API's JSON error (docs/google-cloud.md, "gcloud and the Compute API").
LENGTH_REQUIRED_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 411 (Length Required)!!1</title>\n"
    "  <p><b>411.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>POST requests require a <code>Content-length</code> header.  "
    "<ins>That\u2019s all we know.</ins>\n"
)


class EmulatorApp:
    """The ASGI app: routing, auth, journal and fault injection around the handlers."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        cloud.app = WithoutHooks(self)  # what Cloud Scheduler's deliveries reach
        self.faults: dict[str, Fault] = {}
        self.app = Starlette(
            routes=[
                Route("/_emulator/{hook:path}", self.hooks, methods=["GET", "POST", "DELETE"]),
                Route(
                    "/{path:path}", self.dispatch, methods=["GET", "POST", "DELETE", "PATCH", "PUT"]
                ),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def dispatch(self, request: Request) -> Response:
        started = time.time()
        path = request.url.path
        found = match(request.method, request.headers.get("host", ""), path)
        api = found[0].api if found else ("compute.unknown" if "/compute/" in path else "unknown")
        try:
            response = await self._answer(request, found)
        except LengthRequired:
            response = HTMLResponse(LENGTH_REQUIRED_PAGE, status_code=411)
        except ApiError as err:
            response = error_response(api, err)
        except Exception:
            logger.exception("emulator error on %s %s", request.method, path)
            response = error_response(api, ApiError(500, "backendError", "Internal error."))
        self.cloud.record(
            "request",
            method=request.method,
            path=path,
            query=request.url.query,
            api=api,
            status=response.status_code,
            duration=round(time.time() - started, 4),
        )
        return response

    async def _answer(
        self, request: Request, found: tuple[RouteDef, dict[str, str]] | None
    ) -> Response:
        if found is None:
            raise ApiError(
                404, "notFound", f"The emulator does not answer {request.method} {request.url.path}"
            )
        rdef, params = found
        if rdef.service != "metadata":  # one of Google's APIs, behind Google's front end
            if request.method == "POST" and not (
                "content-length" in request.headers or "transfer-encoding" in request.headers
            ):
                raise LengthRequired()
            authorization = request.headers.get("authorization", "")
            if not authorization.startswith("Bearer "):
                raise ApiError(
                    401,
                    "required",
                    "Request is missing required authentication "
                    "credential. Expected OAuth 2 access token.",
                )
            self.authorize(rdef, params, request.url.path, authorization)
        fault = self.faults.get(rdef.api)
        if fault is not None and fault.count != 0:
            if fault.count > 0:
                fault.count -= 1
            if fault.delay:
                # the request is whole at the server before it is slow to act on it: a caller
                # that gives up meanwhile does not stop it (its answer is lost, not the call)
                await request.body()
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                raise fault_error(fault.status, fault.message)
        return await rdef.handler(self.cloud, request, params)

    def authorize(
        self, rdef: RouteDef, params: dict[str, str], path: str, authorization: str
    ) -> None:
        """A call's API must be enabled (serviceusage/models.py), and a service account's call
        needs the route's permission on its resource (iam/models.py): the project's, a
        secret's, a job's, ... Compute's permissions are its table (compute/permissions.py),
        checked against the configured `permissions` too, whoever calls."""
        cloud = self.cloud
        cloud.serviceusage.require(rdef.service)
        principal = cloud.iam.principal_of(authorization)
        if rdef.service == "compute":
            compute_permissions(rdef.api, path, cloud.cfg.permissions)
            for permission in COMPUTE_REQUIRED.get(rdef.api, ()):
                cloud.iam.require(principal, permission, (resource_of(path), None), rdef.api)
        elif rdef.permission is not None:
            resource = (
                rdef.resource(cloud, params)
                if rdef.resource is not None
                else (f"projects/{cloud.project}", None)
            )
            cloud.iam.require(principal, rdef.permission, resource, rdef.api)

    async def hooks(self, request: Request) -> Response:
        hook = request.path_params["hook"]
        cloud = self.cloud
        method = request.method
        try:
            if hook == "health":
                return JSONResponse({"status": "ok", "time": now_rfc3339()})
            if hook == "journal" and method == "GET":
                since = int(request.query_params.get("since", "0"))
                return JSONResponse({"entries": [e for e in cloud.journal if e["seq"] > since]})
            if hook == "journal" and method == "DELETE":
                cloud.journal.clear()
                return JSONResponse({})
            if hook == "state" and method == "GET":
                return JSONResponse(cloud.state_json())
            if hook == "faults" and method == "POST":
                body = await json_body(request)
                self.faults[str(body["api"])] = Fault(
                    status=body.get("status"),
                    count=int(body.get("count", 1)),
                    delay=float(body.get("delay", 0)),
                    message=str(body.get("message", "")),
                )
                return JSONResponse({})
            if hook == "faults" and method == "DELETE":
                self.faults.clear()
                return JSONResponse({})
            if hook == "stockouts" and method == "POST":
                body = await json_body(request)
                code = str(body.get("code", CAPACITY_CODES[0]))
                if code not in CAPACITY_CODES:
                    raise ValueError(f"code must be one of {', '.join(CAPACITY_CODES)}")
                cloud.compute.stockouts.append(
                    Stockout(
                        zone=str(body.get("zone", cloud.cfg.zone)),
                        machine_type=str(body.get("machine_type", "*")),
                        code=code,
                        count=int(body.get("count", -1)),
                    )
                )
                return JSONResponse({})
            if hook == "stockouts" and method == "DELETE":
                cloud.compute.stockouts.clear()
                return JSONResponse({})
            hit = re.fullmatch(r"instances/([^/]+)/([^/]+)", hook)
            if hit and method == "POST":
                inst = cloud.compute.instance(cloud.project, hit[1], hit[2])
                body = await json_body(request)
                return JSONResponse(await self._set_instance(inst, body))
            hit = re.fullmatch(r"secrets/([^/]+)", hook)
            if hit and method == "POST":
                body = await json_body(request)
                secrets = cloud.secretmanager.secrets
                secret = secrets.get(hit[1]) or secrets.setdefault(hit[1], Secret(hit[1]))
                secret.add(str(body["value"]).encode())
                return JSONResponse({"versions": len(secret.versions)})
            if hook == "iam/token" and method == "POST":
                # a token that acts as a service account (what its metadata server would give)
                body = await json_body(request)
                member = f"serviceAccount:{cloud.iam.account(str(body['account'])).email}"
                return JSONResponse({"access_token": cloud.iam.token_for(member)})
            if hook == "clock" and method == "GET":
                return JSONResponse({"time": stamp(), "offset": clock.offset()})
            if hook == "clock" and method == "POST":
                # the clock forward {"to": epoch or RFC 3339} or {"by": seconds}: only while no
                # task runs and no VM is up (core/clock.py)
                body = await json_body(request)
                to, by = body.get("to"), body.get("by")
                at = clock.advance(
                    to=None if to is None else parse_time(to),
                    by=None if by is None else float(by),
                )
                cloud.record("event", event="clock.moved", to=stamp(at), offset=clock.offset())
                return JSONResponse({"time": stamp(at), "offset": clock.offset()})
            if hook == "run/kill" and method == "POST":
                body = await json_body(request)
                return JSONResponse({"killed": cloud.run.kill(str(body["execution"]))})
            if hook == "scheduler/clock" and method == "POST":
                body = await json_body(request)
                cloud.scheduler.set_clock(str(body["mode"]))
                return JSONResponse({"mode": body["mode"]})
            if hook == "scheduler/fire" and method == "POST":
                return JSONResponse(await cloud.scheduler.fire_hook(await json_body(request)))
            if hook == "images" and method == "POST":
                body = await json_body(request)
                image = await cloud.builds.build_local(
                    str(body["name"]), Path(str(body["context"])), create_repository=True
                )
                return JSONResponse({"name": body["name"], "digest": image.digest})
        except (KeyError, ValueError, TypeError, clock.ClockError) as exc:
            return JSONResponse({"error": f"bad test-hook request: {exc}"}, status_code=400)
        except ApiError as err:
            return error_response("compute", err)
        return JSONResponse({"error": f"no such test hook: {method} {hook}"}, status_code=404)

    async def _set_instance(self, inst: Instance, body: dict[str, Any]) -> dict[str, Any]:
        """Put an instance in a state directly: leftovers of a dead run, slow boots, ...
        With "if_status", nothing changes unless the instance is in that status now (409
        otherwise): a test ends a repair only if nothing has stopped the VM meanwhile."""
        if "if_status" in body and inst.status != body["if_status"]:
            raise ApiError(
                409, "conflict", f"{inst.name} is {inst.status}, not {body['if_status']}"
            )
        for key in (
            "provision_delay",
            "staging_delay",
            "boot_delay",
            "stop_delay",
            "shutdown_grace",
        ):
            if key in body:
                setattr(inst.cfg, key, float(body[key]))
        if "env" in body:
            inst.cfg.env.update({str(k): str(v) for k, v in body["env"].items()})
        if "metadata" in body:
            inst.metadata.update({str(k): str(v) for k, v in body["metadata"].items()})
        if "labels" in body:
            inst.labels = {str(k): str(v) for k, v in body["labels"].items()}
            inst.label_fingerprint = fingerprint()
        if "access_configs" in body:
            for ac in list(inst.access_configs):
                self.cloud.compute.delete_access_config(inst, "nic0", ac["name"])
            for ac in body["access_configs"][:1]:
                self.cloud.compute.add_access_config(inst, "nic0", dict(ac))
        if body.get("preempt"):
            self.cloud.compute.preempt(inst)
        if "status" in body:
            self.cloud.compute.force_state(inst, str(body["status"]))
            deadline = time.monotonic() + 30
            while inst.status != body["status"] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        return {"status": inst.status}


class WithoutHooks:
    """The front without its test hooks: what the private network's sockets serve, and what
    Cloud Scheduler's deliveries reach. A task or a guest in there must not mint a service
    account's token, read the journal or set faults: the hooks answer on the emulator's own
    address outside only."""

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and str(scope.get("path", "")).startswith("/_emulator/"):
            response = JSONResponse(
                {"error": "the emulator's test hooks answer outside its private network only"},
                status_code=404,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
