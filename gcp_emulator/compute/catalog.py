"""What Compute Engine knows before a project makes anything: regions and zones, the default
network's subnet in each region, machine and disk types, and the public images gcloud names by
family (`--image-family=debian-12 --image-project=debian-cloud`).

Static knowledge, kept small: the regions of Google's table of auto-mode subnet ranges (each
region's `default` subnet; recalled from the VPC documentation's "IPv4 ranges for auto mode
networks", not checked against the live API), zones `REGION-a` to `REGION-f`, the predefined
machine types' shapes (capacity.MACHINE_TYPE), and one current image per family. The images'
names and dates are stand-ins: a real family points at a newer image every few weeks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gcp_emulator.compute.capacity import MACHINE_TYPE

# each region's `default` subnet in an auto-mode network (the VPC documentation's table)
SUBNET_RANGES = {
    "asia-east1": "10.140.0.0/20",
    "asia-east2": "10.170.0.0/20",
    "asia-northeast1": "10.146.0.0/20",
    "asia-northeast2": "10.174.0.0/20",
    "asia-northeast3": "10.178.0.0/20",
    "asia-south1": "10.160.0.0/20",
    "asia-south2": "10.190.0.0/20",
    "asia-southeast1": "10.148.0.0/20",
    "asia-southeast2": "10.184.0.0/20",
    "australia-southeast1": "10.152.0.0/20",
    "australia-southeast2": "10.192.0.0/20",
    "europe-central2": "10.186.0.0/20",
    "europe-north1": "10.166.0.0/20",
    "europe-southwest1": "10.204.0.0/20",
    "europe-west1": "10.132.0.0/20",
    "europe-west2": "10.154.0.0/20",
    "europe-west3": "10.156.0.0/20",
    "europe-west4": "10.164.0.0/20",
    "europe-west6": "10.172.0.0/20",
    "europe-west8": "10.198.0.0/20",
    "europe-west9": "10.200.0.0/20",
    "me-west1": "10.208.0.0/20",
    "northamerica-northeast1": "10.162.0.0/20",
    "northamerica-northeast2": "10.188.0.0/20",
    "southamerica-east1": "10.158.0.0/20",
    "southamerica-west1": "10.194.0.0/20",
    "us-central1": "10.128.0.0/20",
    "us-east1": "10.142.0.0/20",
    "us-east4": "10.150.0.0/20",
    "us-east5": "10.202.0.0/20",
    "us-south1": "10.206.0.0/20",
    "us-west1": "10.138.0.0/20",
    "us-west2": "10.168.0.0/20",
    "us-west3": "10.180.0.0/20",
    "us-west4": "10.182.0.0/20",
}
ZONE_RE = re.compile(r"(?P<region>[a-z]+-[a-z]+\d+)-[a-f]")
DISK_TYPES = (
    "pd-standard",
    "pd-balanced",
    "pd-ssd",
    "pd-extreme",
    "hyperdisk-balanced",
    "hyperdisk-extreme",
    "hyperdisk-throughput",
)
# memory per vCPU (MB) of each predefined shape's suffix; n1's standard is 3.75 GB
MEMORY_PER_CPU = {"standard": 4096, "highmem": 8192, "highcpu": 1024}
SHARED_CORE = {"micro": (2, 1024), "small": (2, 2048), "medium": (2, 4096)}  # e2's shared core
DEFAULT_SCOPES = [  # gcloud's default scopes (`--scopes` not given), as it expands them
    f"https://www.googleapis.com/auth/{s}"
    for s in (
        "devstorage.read_only",
        "logging.write",
        "monitoring.write",
        "pubsub",
        "service.management.readonly",
        "servicecontrol",
        "trace.append",
    )
]


@dataclass(frozen=True)
class Image:
    project: str
    family: str
    name: str
    license: str
    description: str
    architecture: str = "X86_64"
    disk_size_gb: int = 10


# one image per public family; names and build dates are stand-ins (see the module's docstring)
IMAGES = [
    Image(
        "debian-cloud",
        "debian-12",
        "debian-12-bookworm-v20250610",
        "debian-12-bookworm",
        "Debian, Debian GNU/Linux, 12 (bookworm), amd64 built on 20250610",
    ),
    Image(
        "debian-cloud",
        "debian-12-arm64",
        "debian-12-bookworm-arm64-v20250610",
        "debian-12-bookworm",
        "Debian, Debian GNU/Linux, 12 (bookworm), arm64 built on 20250610",
        "ARM64",
    ),
    Image(
        "debian-cloud",
        "debian-11",
        "debian-11-bullseye-v20250610",
        "debian-11-bullseye",
        "Debian, Debian GNU/Linux, 11 (bullseye), amd64 built on 20250610",
    ),
    Image(
        "ubuntu-os-cloud",
        "ubuntu-2204-lts",
        "ubuntu-2204-jammy-v20250610",
        "ubuntu-2204-lts",
        "Canonical, Ubuntu, 22.04 LTS, amd64 jammy image built on 2025-06-10",
    ),
    Image(
        "ubuntu-os-cloud",
        "ubuntu-2404-lts-amd64",
        "ubuntu-2404-noble-amd64-v20250610",
        "ubuntu-2404-lts",
        "Canonical, Ubuntu, 24.04 LTS, amd64 noble image built on 2025-06-10",
    ),
]

DEFAULT_IMAGE = IMAGES[0]  # what gcloud makes a boot disk from without --image*: debian-12


def image_by_family(project: str, family: str) -> Image | None:
    return next((i for i in IMAGES if (i.project, i.family) == (project, family)), None)


def image_by_name(project: str, name: str) -> Image | None:
    return next((i for i in IMAGES if (i.project, i.name) == (project, name)), None)


def source_image(url: str) -> tuple[Image | None, str]:
    """The image an instance's `initializeParams.sourceImage` names (a URL or a partial one:
    `projects/P/global/images/family/F`, `projects/P/zones/-/imageFamilyViews/F` or
    `projects/P/global/images/NAME`), and the path it names (for a 404)."""
    path = url[url.find("projects/") :] if "projects/" in url else url
    parts = path.split("/")
    if len(parts) == 6 and parts[2:5] == ["global", "images", "family"]:
        return image_by_family(parts[1], parts[5]), path
    if len(parts) == 6 and parts[2] == "zones" and parts[4] == "imageFamilyViews":
        return image_by_family(parts[1], parts[5]), path
    if len(parts) == 5 and parts[2:4] == ["global", "images"]:
        return image_by_name(parts[1], parts[4]), path
    return None, path


def machine_shape(name: str) -> tuple[int, int] | None:
    """(guestCpus, memoryMb) of a machine type, or None when there is no such type."""
    if not MACHINE_TYPE.fullmatch(name):
        return None
    family, _, rest = name.partition("-")
    if rest in SHARED_CORE:
        return SHARED_CORE[rest]
    if "custom-" in name:
        cpus, memory = name.rsplit("-", 2)[1:]
        return int(cpus), int(memory)
    kind, _, count = rest.rpartition("-")
    per_cpu = 3840 if (family, kind) == ("n1", "standard") else MEMORY_PER_CPU[kind]
    return int(count), int(count) * per_cpu


def region_of_zone(zone: str) -> str | None:
    hit = ZONE_RE.fullmatch(zone)
    return hit["region"] if hit else None
