"""Cloud Build's state and behaviour: builds of a Docker image from a source (a directory, or the
tarball `gcloud builds submit` uploads), on this machine (cloudbuild/dockerfile.py), pushed to
the emulator's Artifact Registry under their tag."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcp_emulator.cloudbuild import dockerfile, wheelhouse
from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import now_rfc3339

if TYPE_CHECKING:
    from gcp_emulator.cloudbuild.dockerfile import Image
    from gcp_emulator.core.state import Cloud


@dataclass
class Build:
    id: str
    tag: str
    source: str
    status: str = "QUEUED"  # QUEUED, WORKING, SUCCESS, FAILURE
    created: str = field(default_factory=now_rfc3339)
    started: str | None = None
    finished: str | None = None
    log: list[str] = field(default_factory=list)
    digest: str = ""
    failure: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CloudBuild:
    """Cloud Build's backend: builds by id, the wheelhouse their pip installs from."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.builds: dict[str, Build] = {}
        self._wheelhouse: Path | None = None

    def wheelhouse(self) -> Path:
        if self._wheelhouse is None:
            self._wheelhouse = self.cloud.state_root / "wheelhouse"
            wheelhouse.build(self._wheelhouse)
        return self._wheelhouse

    async def build_local(self, tag: str, context: Path, create_repository: bool = False) -> Image:
        """Build context's Dockerfile and push it as tag (the images test hook: no upload)."""
        repo, parts = self.cloud.images.repository_of(tag)
        if repo is None and create_repository and parts:
            parent = f"projects/{parts['project']}/locations/{parts['location']}"
            self.cloud.images.create(parent, parts["repo"], {"format": "DOCKER"})
        build = Build(secrets.token_hex(16), tag, str(context))
        self.builds[build.id] = build
        await self.run(build, context)
        if build.status != "SUCCESS":
            raise ApiError(400, "failedPrecondition", f"the build failed: {build.failure}")
        image = self.cloud.images.find(tag)
        if image is None:  # pragma: no cover: a successful build pushed it
            raise ApiError(500, "backendError", f"the build of {tag} pushed nothing")
        return image

    async def run(self, build: Build, context: Path) -> None:
        """Carry the build out: its log in build.log, its image pushed, its status set."""
        build.status, build.started = "WORKING", now_rfc3339()
        out = self.cloud.state_root / "images" / build.id
        try:
            house = await asyncio.to_thread(self.wheelhouse)
            image = await asyncio.to_thread(
                dockerfile.build, context, out, house, self.cloud.command, build.log.append
            )
            build.log.append(f"Pushing {build.tag}")
            self.cloud.images.push(build.tag, image)
            build.digest = image.digest
            build.log.append(f"latest: digest: {image.digest}")
            build.status = "SUCCESS"
        except (dockerfile.BuildError, ApiError, OSError) as exc:
            build.failure = str(exc)
            build.log.append(f"ERROR: {exc}")
            build.status = "FAILURE"
            shutil.rmtree(out, ignore_errors=True)
        finally:
            build.finished = now_rfc3339()
            build.done.set()
            self.cloud.record("event", event="cloudbuild.build", id=build.id, status=build.status)

    def state_json(self) -> dict[str, Any]:
        return {"builds": {b.id: b.status for b in self.builds.values()}}
