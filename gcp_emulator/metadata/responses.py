"""The metadata server's HTTP surface (what a guest reads at 169.254.169.254): the tree of
metadata/tree.py with ETags and wait_for_change, guest attributes, and the emulator's own
poweroff for a guest."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gcp_emulator.compute.models import Instance
from gcp_emulator.core.routing import service_route
from gcp_emulator.core.state import Cloud
from gcp_emulator.metadata import tree as metadata_tree

route = service_route("metadata")


GUEST_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-]+")
MAX_GUEST_ATTRIBUTE_BYTES = 100 * 1024  # the documented limit per value


async def metadata(
    cloud: Cloud,
    request: Request,
    inst: Instance | None,
    key: str,
    task: dict[str, Any] | None = None,
) -> Response:
    """A read of the metadata server (metadata/tree.py): text, a listing or JSON, with
    its ETag; with wait_for_change=true, once the value's ETag is no longer last_etag (or, with
    no last_etag, once it changes), or at timeout_sec."""
    if request.headers.get("metadata-flavor") != "Google":
        return PlainTextResponse(
            "Missing Metadata-Flavor:Google header.", 403, headers={"Metadata-Flavor": "Google"}
        )
    q = request.query_params
    recursive = q.get("recursive", "").lower() == "true"
    value = metadata_tree.lookup(cloud, inst, key, task)
    if q.get("wait_for_change", "").lower() == "true" and value is not None:
        try:
            timeout = min(float(q.get("timeout_sec", "300")), 3600.0)
        except ValueError:
            return PlainTextResponse("Invalid timeout_sec.", 400)
        last = q.get("last_etag") or metadata_tree.etag(value)
        deadline = time.monotonic() + timeout
        while metadata_tree.etag(value) == last and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            value = metadata_tree.lookup(cloud, inst, key, task)
            if value is None:
                break
    if value is None:
        return PlainTextResponse("Not Found", 404, headers={"Metadata-Flavor": "Google"})
    headers = {"Metadata-Flavor": "Google", "ETag": metadata_tree.etag(value)}
    alt = q.get("alt", "json" if recursive else "text")
    if (
        isinstance(value, (dict, list))
        and not recursive
        and not isinstance(value, metadata_tree.Token)
    ):
        attributes = key.rstrip("/").endswith("attributes")
        if alt == "json":
            entries = value if isinstance(value, list) else sorted(value)
            return JSONResponse(entries if attributes else value, headers=headers)
        return PlainTextResponse(metadata_tree.listing(value, attributes), headers=headers)
    if alt == "json" or isinstance(value, (dict, list)):
        return JSONResponse(value, headers=headers)
    return PlainTextResponse(str(value), headers=headers)


GA = "/vm/{zone}/{instance}/computeMetadata/v1/instance/guest-attributes/{namespace}/{key}"


def _guest_attribute(cloud: Cloud, request: Request, m: dict[str, str]) -> tuple[Instance, str]:
    """The instance and "namespace/key" of a guest's guest-attribute call, or the error the
    metadata server answers (as text, like the rest of the metadata server)."""
    inst = cloud.compute.instance(cloud.project, m["zone"], m["instance"])
    if request.headers.get("metadata-flavor") != "Google":
        raise MetadataError(403, "Missing Metadata-Flavor:Google header.")
    if not inst.guest_attributes_enabled():
        raise MetadataError(403, "Guest attributes endpoint access is disabled.")
    for name in (m["namespace"], m["key"]):
        if not GUEST_ATTRIBUTE_NAME.fullmatch(name):
            raise MetadataError(400, f"Invalid guest attribute name: {name!r}.")
    return inst, f"{m['namespace']}/{m['key']}"


class MetadataError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@route("PUT", GA, "metadata.guestAttributes.put")
async def guest_attribute_put(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    headers = {"Metadata-Flavor": "Google"}
    try:
        inst, path = _guest_attribute(cloud, request, m)
        value = await request.body()
        if len(value) > MAX_GUEST_ATTRIBUTE_BYTES:
            raise MetadataError(400, "Guest attribute value too large.")
    except MetadataError as err:
        return PlainTextResponse(err.text, err.code, headers=headers)
    inst.guest_attributes[path] = value.decode("utf-8", "replace")
    cloud.record("event", event="guest_attribute", instance=f"{inst.zone}/{inst.name}", key=path)
    return PlainTextResponse("", headers=headers)


@route("GET", GA, "metadata.guestAttributes.get")
async def guest_attribute_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    headers = {"Metadata-Flavor": "Google"}
    try:
        inst, path = _guest_attribute(cloud, request, m)
    except MetadataError as err:
        return PlainTextResponse(err.text, err.code, headers=headers)
    if path not in inst.guest_attributes:
        return PlainTextResponse("Not Found", 404, headers=headers)
    return PlainTextResponse(inst.guest_attributes[path], headers=headers)


@route("GET", "/vm/{zone}/{instance}/computeMetadata/v1/{rest}", "metadata.get")
async def guest_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    inst = cloud.compute.instance(cloud.project, m["zone"], m["instance"])
    return await metadata(cloud, request, inst, m["rest"])


@route("GET", "/computeMetadata/v1/{rest}", "metadata.get")
async def plain_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return await metadata(cloud, request, None, m["rest"])


@route("GET", "/run-task/{key}/computeMetadata/v1/{rest}", "metadata.get")
async def task_metadata(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    """A Cloud Run task's metadata server (it reaches it by GCE_METADATA_ROOT: run/models.py)."""
    task = cloud.run.task_metadata(m["key"])
    if task is None:
        return PlainTextResponse("Not Found", 404, headers={"Metadata-Flavor": "Google"})
    return await metadata(cloud, request, None, m["rest"], task)


@route("POST", "/vm/{zone}/{instance}/emulator/poweroff", "guest.poweroff")
async def guest_poweroff(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    cloud.compute.power_off_from_guest(
        cloud.compute.instance(cloud.project, m["zone"], m["instance"])
    )
    return PlainTextResponse("powering off\n")
