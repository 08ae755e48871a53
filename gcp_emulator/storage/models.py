"""Cloud Storage's state: buckets of objects, as far as Cloud Build uses them: the source tarball
`gcloud builds submit` uploads (the JSON API's multipart or resumable upload), the build's log
object that gcloud reads as it grows (the XML API's path with a Range header).

Assumed rather than known: a bucket's answer carries the fields gcloud reads (id, name,
projectNumber, location, storageClass, timeCreated); no ACLs, versioning or retention; every
object's first generation is its only one; a bucket name's global uniqueness is this emulator's
(its buckets are all the project's)."""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcp_emulator.core.crc32c import crc32c
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import now_rfc3339

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud


@dataclass
class Blob:
    name: str
    data: bytearray
    content_type: str = "application/octet-stream"
    generation: str = field(default_factory=lambda: str(time.time_ns() // 1000))
    created: str = field(default_factory=now_rfc3339)
    updated: str = field(default_factory=now_rfc3339)


@dataclass
class Bucket:
    name: str
    project: str
    location: str = "US"
    created: str = field(default_factory=now_rfc3339)
    blobs: dict[str, Blob] = field(default_factory=dict)


class Storage:
    """Cloud Storage's backend: buckets by name, their objects, uploads under way."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.buckets: dict[str, Bucket] = {}
        self.uploads: dict[str, dict[str, Any]] = {}  # resumable: upload_id -> its object

    def bucket(self, name: str) -> Bucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            raise ApiError(404, "notFound", "The specified bucket does not exist.")
        return bucket

    def create_bucket(self, name: str, location: str = "US") -> Bucket:
        if name in self.buckets:
            raise ApiError(
                409,
                "conflict",
                "Your previous request to create the named bucket succeeded and you already "
                "own it.",
            )
        if not (3 <= len(name) <= 222) or not name[0].isalnum():
            raise ApiError(400, "invalid", f"Invalid bucket name: '{name}'")
        bucket = Bucket(name, self.cloud.project, location.upper())
        self.buckets[name] = bucket
        return bucket

    def blob(self, bucket: str, name: str) -> Blob:
        blob = self.bucket(bucket).blobs.get(name)
        if blob is None:
            raise ApiError(404, "notFound", f"No such object: {bucket}/{name}")
        return blob

    def put(self, bucket: str, name: str, data: bytes, content_type: str) -> Blob:
        if not name:
            raise ApiError(400, "required", "Required parameter: name")
        blob = Blob(name, bytearray(data), content_type or "application/octet-stream")
        self.bucket(bucket).blobs[name] = blob
        return blob

    def append(self, bucket: str, name: str, data: bytes) -> None:
        """More bytes at an object's end (Cloud Build's log, as it writes it)."""
        target = self.bucket(bucket)
        blob = target.blobs.get(name)
        if blob is None:
            blob = target.blobs[name] = Blob(name, bytearray(), "text/plain; charset=utf-8")
        blob.data.extend(data)
        blob.updated = now_rfc3339()

    # -- answers -----------------------------------------------------------------------------

    def bucket_json(self, bucket: Bucket) -> dict[str, Any]:
        return {
            "kind": "storage#bucket",
            "id": bucket.name,
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket.name}",
            "name": bucket.name,
            "projectNumber": str(self.cloud.cfg.project_number),
            "metageneration": "1",
            "location": bucket.location,
            "storageClass": "STANDARD",
            "etag": "CAE=",
            "timeCreated": bucket.created,
            "updated": bucket.created,
            "locationType": "multi-region" if bucket.location in ("US", "EU", "ASIA") else "region",
        }

    def blob_json(self, bucket: str, blob: Blob) -> dict[str, Any]:
        data = bytes(blob.data)
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{blob.name}/{blob.generation}",
            "name": blob.name,
            "bucket": bucket,
            "generation": blob.generation,
            "metageneration": "1",
            "contentType": blob.content_type,
            "storageClass": "STANDARD",
            "size": str(len(data)),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
            "crc32c": base64.b64encode(crc32c(data).to_bytes(4, "big")).decode(),
            "etag": "CAE=",
            "timeCreated": blob.created,
            "updated": blob.updated,
        }

    def state_json(self) -> dict[str, Any]:
        return {
            "storage": {
                b.name: {n: len(o.data) for n, o in b.blobs.items()} for b in self.buckets.values()
            }
        }
