"""Cloud Storage's HTTP surface, as `gcloud builds submit` uses it: the JSON API's buckets get,
insert and list, objects get (metadata or media) and insert (multipart and resumable uploads,
the multipart boundary as gcloud quotes it); and the XML API's object read by path with a Range
header, which is how gcloud follows a build's log (`https://storage.googleapis.com/BUCKET/OBJ`:
a fixed address, so this works only where Google's names reach the emulator: its private
network)."""

from __future__ import annotations

import json
import re
import secrets
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.routing import json_body, service_route
from gcp_emulator.core.state import Cloud

route = service_route("storage")
B = "/storage/v1/b"


def multipart_parts(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """(the object's metadata, its bytes, their content type) from a multipart/related upload;
    apitools puts the boundary in single quotes (`boundary='===...=='`), which a MIME parser
    takes as part of it, so the quotes go first."""
    fixed = re.sub(r"boundary='([^']*)'", r'boundary="\1"', content_type)
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + fixed.encode() + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if len(parts) != 2:
        raise ApiError(400, "invalid", "Multipart upload needs metadata and media parts.")
    try:
        metadata = json.loads(parts[0].get_payload(decode=True) or b"{}")
    except ValueError:
        raise ApiError(400, "parseError", "Invalid JSON in the metadata part.") from None
    media = parts[1].get_payload(decode=True) or b""
    return metadata, media, parts[1].get_content_type()


@route("GET", B + "/{bucket}", "storage.buckets.get", "storage.buckets.get")
async def buckets_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    return JSONResponse(cloud.storage.bucket_json(cloud.storage.bucket(m["bucket"])))


@route("POST", B, "storage.buckets.insert", "storage.buckets.create")
async def buckets_insert(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    body = await json_body(request)
    bucket = cloud.storage.create_bucket(
        str(body.get("name") or ""), str(body.get("location") or "US")
    )
    return JSONResponse(cloud.storage.bucket_json(bucket))


@route("GET", B, "storage.buckets.list", "storage.buckets.list")
async def buckets_list(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    prefix = request.query_params.get("prefix", "")
    items = [
        cloud.storage.bucket_json(b)
        for name, b in sorted(cloud.storage.buckets.items())
        if name.startswith(prefix) and b.project == cloud.project
    ]
    return JSONResponse({"kind": "storage#buckets", "items": items} if items else {})


@route("GET", B + "/{bucket}/o/{rest}", "storage.objects.get", "storage.objects.get")
async def objects_get(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    blob = cloud.storage.blob(m["bucket"], m["rest"])
    if request.query_params.get("alt") == "media":
        return Response(bytes(blob.data), media_type=blob.content_type)
    return JSONResponse(cloud.storage.blob_json(m["bucket"], blob))


@route("POST", "/upload" + B + "/{bucket}/o", "storage.objects.insert", "storage.objects.create")
async def objects_insert(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    kind = request.query_params.get("uploadType", "media")
    body = await request.body()
    name = request.query_params.get("name", "")
    if kind == "multipart":
        metadata, data, content_type = multipart_parts(
            request.headers.get("content-type", ""), body
        )
        name = str(metadata.get("name") or name)
        if "size" in metadata and str(metadata["size"]) != str(len(data)):
            raise ApiError(400, "invalid", "The size in the metadata is not the media's.")
    elif kind == "media":
        data, content_type = body, request.headers.get("content-type", "")
    else:
        raise ApiError(400, "invalid", f"Unsupported uploadType {kind!r} on this path.")
    cloud.storage.bucket(m["bucket"])
    blob = cloud.storage.put(m["bucket"], name, data, content_type)
    return JSONResponse(cloud.storage.blob_json(m["bucket"], blob))


@route(
    "POST",
    "/resumable/upload" + B + "/{bucket}/o",
    "storage.objects.insert",
    "storage.objects.create",
)
async def objects_resumable_start(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    """A resumable upload's start: the object's metadata; the bytes come in a PUT to Location."""
    if request.query_params.get("uploadType") != "resumable":
        raise ApiError(400, "invalid", "uploadType=resumable is required on this path.")
    cloud.storage.bucket(m["bucket"])
    metadata = await json_body(request)
    upload_id = secrets.token_urlsafe(24)
    cloud.storage.uploads[upload_id] = {
        "bucket": m["bucket"],
        "name": str(metadata.get("name") or request.query_params.get("name", "")),
        "content_type": request.headers.get("x-upload-content-type", ""),
        "data": bytearray(),
    }
    host = request.headers.get("host", "storage.googleapis.com")
    scheme = request.url.scheme
    prefix = "" if host.split(":")[0] == "storage.googleapis.com" else "/storage"
    location = (
        f"{scheme}://{host}{prefix}/upload/storage/v1/b/{m['bucket']}/o"
        f"?uploadType=resumable&upload_id={upload_id}"
    )
    return Response(status_code=200, headers={"Location": location})


@route("PUT", "/upload" + B + "/{bucket}/o", "storage.objects.insert", "storage.objects.create")
async def objects_resumable_put(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    """A resumable upload's bytes (Content-Range: bytes FIRST-LAST/TOTAL): 308 with the Range
    received until the last byte is in, then the object."""
    upload = cloud.storage.uploads.get(request.query_params.get("upload_id", ""))
    if upload is None or upload["bucket"] != m["bucket"]:
        raise ApiError(404, "notFound", "No such upload session.")
    chunk = await request.body()
    total: int | None = len(upload["data"]) + len(chunk)  # no Content-Range: all of it
    hit = re.fullmatch(
        r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", request.headers.get("content-range", "")
    )
    if hit:
        if hit[1] is not None and int(hit[1]) != len(upload["data"]):
            raise ApiError(400, "invalid", "The chunk does not start where the upload is.")
        total = None if hit[3] == "*" else int(hit[3])
    upload["data"].extend(chunk)
    if total is None or len(upload["data"]) < total:  # more to come (or a status query)
        have = len(upload["data"])
        return Response(status_code=308, headers={"Range": f"bytes=0-{have - 1}"} if have else {})
    del cloud.storage.uploads[request.query_params["upload_id"]]
    blob = cloud.storage.put(
        upload["bucket"], upload["name"], bytes(upload["data"]), upload["content_type"]
    )
    return JSONResponse(cloud.storage.blob_json(upload["bucket"], blob))


# the XML API's read by path: last, so that the JSON API's paths are matched first
@route("GET", "/{bucket}/{rest}", "storage.objects.get", "storage.objects.get")
async def objects_read(cloud: Cloud, request: Request, m: dict[str, str]) -> Response:
    """An object's bytes, from `Range: bytes=N-` on: 206 with them, 416 when there are none past
    N, 404 until it exists (how gcloud follows a build's log)."""
    blob = cloud.storage.blob(m["bucket"], m["rest"])
    data = bytes(blob.data)
    wanted = request.headers.get("range", "")
    suffix = re.fullmatch(r"bytes=-(\d+)", wanted)
    hit = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
    if suffix is not None and int(suffix[1]) > 0:  # the last N bytes
        hit = None
        start, end = max(0, len(data) - int(suffix[1])), len(data) - 1
    elif hit is None or (hit[2] and int(hit[2]) < int(hit[1])):
        return Response(data, media_type=blob.content_type)  # none, or not one: the whole
    else:
        start = int(hit[1])
        end = min(int(hit[2]), len(data) - 1) if hit[2] else len(data) - 1
    if start >= len(data):
        return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
    part = data[start : end + 1]
    return Response(
        part,
        status_code=206,
        media_type=blob.content_type,
        headers={"Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}"},
    )
