"""Artifact Registry's state: Docker repositories, and the images Cloud Build pushed to them by
tag (`LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE:TAG`), each an image directory of
cloudbuild/dockerfile.py; a Cloud Run job's image is looked up here."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import now_rfc3339

if TYPE_CHECKING:
    from gcp_emulator.cloudbuild.dockerfile import Image
    from gcp_emulator.core.state import Cloud

IMAGE_NAME = re.compile(
    r"(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)/"
    r"(?P<image>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]+))?"
)


@dataclass
class Repository:
    name: str  # projects/P/locations/L/repositories/R
    format: str = "DOCKER"
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now_rfc3339)
    updated: str = field(default_factory=now_rfc3339)
    images: dict[str, dict[str, Image]] = field(default_factory=dict)  # image -> tag -> Image

    def json(self) -> dict[str, Any]:
        size = sum(
            sum(p.stat().st_size for p in img.root.rglob("*") if p.is_file())
            for tags in self.images.values()
            for img in {id(i): i for i in tags.values()}.values()
        )
        body: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "mode": "STANDARD_REPOSITORY",
            "createTime": self.created,
            "updateTime": self.updated,
            "sizeBytes": str(size),
        }
        if self.description:
            body["description"] = self.description
        if self.labels:
            body["labels"] = self.labels
        return body


class ArtifactRegistry:
    """Artifact Registry's backend: repositories by name, and their images."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.repositories: dict[str, Repository] = {}
        self.operations: dict[str, dict[str, Any]] = {}

    def repository(self, name: str) -> Repository:
        repo = self.repositories.get(name)
        if repo is None:
            raise ApiError(404, "notFound", "Requested entity was not found.")
        return repo

    def create(self, parent: str, repo_id: str, body: dict[str, Any]) -> Repository:
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", repo_id):
            raise ApiError(400, "invalid", f"Invalid repository id {repo_id!r}.")
        name = f"{parent}/repositories/{repo_id}"
        if name in self.repositories:
            raise ApiError(409, "alreadyExists", "the repository already exists")
        fmt = str(body.get("format") or "DOCKER")
        if fmt != "DOCKER":
            raise ApiError(
                400, "invalid", f"the emulator keeps DOCKER repositories only, not {fmt}"
            )
        repo = Repository(
            name, fmt, str(body.get("description") or ""), dict(body.get("labels") or {})
        )
        self.repositories[name] = repo
        return repo

    def delete(self, name: str) -> None:
        self.repository(name)
        del self.repositories[name]

    def operation(self, parent: str, response: dict[str, Any] | None, kind: str) -> dict[str, Any]:
        """A long-running operation, already done (the emulator's are instant)."""
        name = f"{parent}/operations/{secrets.token_hex(16)}"
        op: dict[str, Any] = {"name": name, "done": True}
        if response is not None:
            op["response"] = {
                "@type": f"type.googleapis.com/google.devtools.artifactregistry.v1.{kind}",
                **response,
            }
        else:
            op["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        self.operations[name] = op
        return op

    # -- images ------------------------------------------------------------------------------

    def repository_of(self, image_name: str) -> tuple[Repository | None, dict[str, str]]:
        hit = IMAGE_NAME.fullmatch(image_name)
        if hit is None:
            return None, {}
        parts = {k: v or "" for k, v in hit.groupdict().items()}
        location = f"projects/{parts['project']}/locations/{parts['location']}"
        name = f"{location}/repositories/{parts['repo']}"
        return self.repositories.get(name), parts

    def push(self, image_name: str, image: Image) -> None:
        """Record image under image_name's tag (Cloud Build's push). Raises when the repository
        does not exist, as the registry refuses it."""
        repo, parts = self.repository_of(image_name)
        if repo is None:
            raise ApiError(
                404,
                "notFound",
                f'name unknown: Repository "{parts.get("repo", image_name)}" not found',
            )
        repo.images.setdefault(parts["image"], {})[parts["tag"] or "latest"] = image
        repo.updated = now_rfc3339()
        self.cloud.record(
            "event", event="artifactregistry.push", image=image_name, digest=image.digest
        )

    def find(self, image_name: str) -> Image | None:
        """The image a name refers to (by tag, default latest, or by digest), or None."""
        repo, parts = self.repository_of(image_name)
        if repo is None:
            return None
        tags = repo.images.get(parts["image"], {})
        if parts["digest"]:
            return next((i for i in tags.values() if i.digest == parts["digest"]), None)
        return tags.get(parts["tag"] or "latest")

    def docker_images(self, repo: Repository) -> list[dict[str, Any]]:
        out = []
        location = repo.name.split("/")[3]
        project = repo.name.split("/")[1]
        base = f"{location}-docker.pkg.dev/{project}/{repo.name.rsplit('/', 1)[1]}"
        for image, tags in sorted(repo.images.items()):
            by_digest: dict[str, list[str]] = {}
            for tag, img in tags.items():
                by_digest.setdefault(img.digest, []).append(tag)
            for digest, names in by_digest.items():
                out.append(
                    {
                        "name": f"{repo.name}/dockerImages/{image}@{digest}",
                        "uri": f"{base}/{image}@{digest}",
                        "tags": sorted(names),
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "uploadTime": repo.updated,
                        "updateTime": repo.updated,
                    }
                )
        return out

    def state_json(self) -> dict[str, Any]:
        return {
            "artifactregistry": {
                name: {img: sorted(tags) for img, tags in repo.images.items()}
                for name, repo in self.repositories.items()
            }
        }
