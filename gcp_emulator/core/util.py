"""Small things every service of the emulator shares: its clock's RFC 3339 stamps, the base64
fingerprints Google's APIs answer with and take back, and bytes fields in JSON."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

from gcp_emulator.core import clock


def now_rfc3339() -> str:
    return clock.utcnow().isoformat(timespec="milliseconds").replace("+00:00", "-00:00")


def fingerprint() -> str:
    """A fresh base64 fingerprint, as Compute returns them (gcloud decodes them)."""
    return base64.b64encode(os.urandom(8)).decode()


def decode_bytes(value: str) -> bytes:
    """A bytes field as protobuf's JSON mapping reads it: standard or URL-safe base64, padded or
    not (gcloud sends the URL-safe alphabet). ValueError when it is neither."""
    text = value.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def same_fingerprint(given: object, current: str) -> bool:
    """Fingerprints are bytes: gcloud may send back the URL-safe base64 of what it read."""
    if not isinstance(given, str):
        return False
    try:
        return decode_bytes(given) == base64.b64decode(current)
    except ValueError:
        return False


def stamp(epoch: float | None = None) -> str:
    """A protobuf Timestamp in JSON: UTC, "Z", the fraction's digits only where there is one."""
    moment = datetime.fromtimestamp(clock.now() if epoch is None else epoch, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"
