"""Cloud Build's state and behaviour: builds of a Docker image from a source (a directory, or the
tarball `gcloud builds submit` uploads), on this machine (cloudbuild/dockerfile.py), pushed to
the emulator's Artifact Registry under their tag."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
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
    status: str = "QUEUED"  # QUEUED, WORKING, SUCCESS, FAILURE, CANCELLED, TIMEOUT
    created: str = field(default_factory=now_rfc3339)
    started: str | None = None
    finished: str | None = None
    log: list[str] = field(default_factory=list)
    digest: str = ""
    failure: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # a build submitted through the API: where, what was asked, where its log goes
    location: str = "global"
    request: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    dockerfile: str = "Dockerfile"
    context_dir: str = "."
    timeout: float = 600.0
    log_bucket: str = ""
    write: Callable[[str], None] | None = None  # each log line, as it comes
    task: asyncio.Task[None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)  # a cancel or a timeout

    def say(self, line: str) -> None:
        self.log.append(line)
        if self.write is not None:
            self.write(line)


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
        """Carry the build out: its log in build.log, its images pushed, its status set."""
        build.status, build.started = "WORKING", now_rfc3339()
        out = self.cloud.state_root / "images" / build.id
        tags = build.tags or [build.tag]
        try:
            house = await asyncio.to_thread(self.wheelhouse)
            image = await asyncio.to_thread(
                dockerfile.build,
                context / build.context_dir,
                out,
                house,
                self.cloud.command,
                build.say,
                build.dockerfile,
                build.stop,
            )
            for tag in tags:
                build.say(f"Pushing {tag}")
                self.cloud.images.push(tag, image)
            build.digest = image.digest
            build.say(f"latest: digest: {image.digest}")
            build.status = "SUCCESS"
        except (dockerfile.BuildError, ApiError, OSError) as exc:
            shutil.rmtree(out, ignore_errors=True)
            if build.stop.is_set():  # a cancel or a timeout: its caller says which
                return
            build.failure = str(exc)
            build.say(f"ERROR: {exc}")
            build.status = "FAILURE"
        finally:
            if not build.stop.is_set():
                build.finished = now_rfc3339()
                build.done.set()
            self.cloud.record("event", event="cloudbuild.build", id=build.id, status=build.status)

    # -- builds submitted through the API (gcloud builds submit) ------------------------------

    def logs_bucket(self) -> str:
        """The project's default logs bucket (Google's, not the project's own)."""
        return f"{self.cloud.cfg.project_number}.cloudbuild-logs.googleusercontent.com"

    def submit(self, location: str, body: dict[str, Any]) -> Build:
        """builds.create: a build of a `docker build` step from a Cloud Storage source, pushed
        to its `images`; it runs at once (queued only while it starts)."""
        source = (body.get("source") or {}).get("storageSource") or {}
        if not source.get("bucket") or not source.get("object"):
            raise ApiError(
                400,
                "invalid",
                "The emulator's Cloud Build takes its source from Cloud Storage "
                "(source.storageSource: bucket and object).",
            )
        steps = body.get("steps") or []
        if len(steps) != 1 or not str(steps[0].get("name", "")).startswith(
            ("gcr.io/cloud-builders/docker", "docker")
        ):
            raise ApiError(
                400,
                "invalid",
                "The emulator's Cloud Build runs one `docker build` step (what `gcloud builds "
                "submit --tag` sends); not these steps.",
            )
        args = [str(a) for a in steps[0].get("args") or []]
        tags, dockerfile_name, context_dir = docker_build_args(args)
        images = [str(i) for i in body.get("images") or []]
        missing = [i for i in images if i not in tags]
        if missing:
            raise ApiError(400, "invalid", f"images {missing} are not built by any step.")
        timeout = seconds_of(body.get("timeout"), 600.0)
        build = Build(
            str(uuid.uuid4()),
            images[0] if images else tags[0],
            f"gs://{source['bucket']}/{source['object']}",
            location=location,
            request=body,
            tags=images,
            dockerfile=dockerfile_name,
            context_dir=context_dir,
            timeout=timeout,
            log_bucket=self.logs_bucket(),
        )
        storage = self.cloud.storage
        if build.log_bucket not in storage.buckets:
            storage.create_bucket(build.log_bucket)
        log_object = f"log-{build.id}.txt"
        build.write = lambda line: storage.append(
            build.log_bucket, log_object, (line + "\n").encode()
        )
        self.builds[build.id] = build
        build.task = asyncio.get_running_loop().create_task(self._submitted(build, source))
        return build

    async def _submitted(self, build: Build, source: dict[str, Any]) -> None:
        build.say(f'starting build "{build.id}"')
        build.say("")
        build.say("FETCHSOURCE")
        where = self.cloud.state_root / "builds" / build.id
        try:
            blob = self.cloud.storage.blob(str(source["bucket"]), str(source["object"]))
            build.say(f"Fetching storage object: {build.source}#{blob.generation}")
            where.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(extract, bytes(blob.data), where)
        except (ApiError, tarfile.TarError, OSError) as exc:
            build.failure = f"failed to fetch the source: {exc}"
            build.say(f"ERROR: {build.failure}")
            build.status, build.finished = "FAILURE", now_rfc3339()
            build.done.set()
            return
        build.say("BUILD")
        running = asyncio.get_running_loop().create_task(self.run(build, where))
        try:
            await asyncio.wait_for(asyncio.shield(running), build.timeout)
        except TimeoutError:
            build.stop.set()  # its step's processes are killed; the build ends as it stops
            build.write = None
            await asyncio.gather(running, return_exceptions=True)
            build.status, build.failure = "TIMEOUT", f"Build timed out after {build.timeout:g}s"
            build.finished = now_rfc3339()
            build.done.set()
        except asyncio.CancelledError:
            build.stop.set()
            build.write = None
            await asyncio.gather(running, return_exceptions=True)
            build.status, build.finished = "CANCELLED", now_rfc3339()
            build.done.set()
            shutil.rmtree(where, ignore_errors=True)
            raise
        if build.status == "SUCCESS":
            build.say("PUSH")
            build.say("DONE")
        shutil.rmtree(where, ignore_errors=True)

    def cancel(self, build: Build) -> Build:
        """builds.cancel: its step's processes killed, its log closed, CANCELLED."""
        if build.task is not None and not build.done.is_set():
            build.stop.set()
            build.task.cancel()
            build.status = "CANCELLED"
            if build.finished is None:  # cancelled before it started: nothing else ends it
                build.finished = now_rfc3339()
            build.done.set()
        return build

    async def close(self) -> None:
        """The emulator is exiting: every build under way is stopped and awaited."""
        running = [b for b in self.builds.values() if b.task is not None and not b.done.is_set()]
        for build in running:
            self.cancel(build)
        tasks = [b.task for b in running if b.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15)

    def build(self, build_id: str) -> Build:
        build = self.builds.get(build_id)
        if build is None:
            raise ApiError(404, "notFound", f"Requested entity was not found: build {build_id}.")
        return build

    def state_json(self) -> dict[str, Any]:
        return {"builds": {b.id: b.status for b in self.builds.values()}}


def docker_build_args(args: list[str]) -> tuple[list[str], str, str]:
    """(the tags, the Dockerfile, the context directory) of `docker build ARGS`."""
    if not args or args[0] != "build":
        raise ApiError(400, "invalid", f"Not a docker build step: {' '.join(args)!r}.")
    tags: list[str] = []
    dockerfile_name, context = "Dockerfile", ""
    rest = iter(args[1:])
    for arg in rest:
        if arg in ("-t", "--tag"):
            tags.append(next(rest, ""))
        elif arg in ("-f", "--file"):
            dockerfile_name = next(rest, "Dockerfile")
        elif arg == "--network":
            next(rest, None)
        elif arg in ("--no-cache", "--pull", "-q", "--quiet"):
            continue
        elif arg.startswith("-"):
            raise ApiError(400, "invalid", f"The emulator's docker build takes no {arg}.")
        else:
            context = arg
    if not tags or not context:
        raise ApiError(400, "invalid", "docker build needs -t TAG and a context.")
    if context.startswith("/") or ".." in Path(context).parts:
        raise ApiError(400, "invalid", f"The build's context must be within its source: {context}")
    if dockerfile_name.startswith("/") or ".." in Path(dockerfile_name).parts:
        raise ApiError(
            400, "invalid", f"The Dockerfile must be within its source: {dockerfile_name}"
        )
    return tags, dockerfile_name, context


def extract(data: bytes, where: Path) -> None:
    """The source tarball (gzip or plain) into where: its directories, regular files and links
    that stay within it; anything else (an absolute or `..` name, a link out of it, a hard link,
    a device) is refused before a byte is written, whatever this Python's tarfile filter
    catches on its own."""
    base = where.resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        members = tar.getmembers()
        for m in members:
            name = PurePosixPath(m.name)
            if name.is_absolute() or ".." in name.parts:
                raise tarfile.TarError(f"{m.name}: outside the source")
            if not (m.isdir() or m.isfile() or m.issym()):
                raise tarfile.TarError(f"{m.name}: not a file, a directory or a symbolic link")
            if m.issym():
                target = PurePosixPath(m.linkname)
                resolved = os.path.normpath(base / name.parent / target)
                if target.is_absolute() or not Path(resolved).is_relative_to(base):
                    raise tarfile.TarError(f"{m.name}: a link out of the source ({m.linkname})")
        tar.extractall(where, members=members, filter="data")


def seconds_of(value: Any, default: float) -> float:
    if value in (None, ""):
        return default
    text = str(value).removesuffix("s")
    try:
        return float(text)
    except ValueError:
        raise ApiError(400, "invalid", f"Invalid duration {value!r}.") from None
