"""The permission each Compute method needs, checked when the configuration names the caller's
permissions.

Compute Engine checks a permission for each method (docs/google-cloud.md, "IAM: what each call
needs") and answers a missing one with HTTP 403, reason `forbidden`, "Required 'PERMISSION'
permission for 'RESOURCE'". With `permissions` in the configuration, every Compute call of a
caller with a bearer token is checked against that list; without it, any token may do anything
(the emulator's default). Secret Manager and the metadata server are the VM's identity, not the
job's, and are not checked.
"""

from __future__ import annotations

from gcp_emulator.core.errors import ApiError

# The permissions each emulated Compute method needs (a method may need several: adding an
# access config uses the address and the subnetwork's external IP too).
REQUIRED: dict[str, tuple[str, ...]] = {
    "compute.instances.get": ("compute.instances.get",),
    "compute.instances.list": ("compute.instances.list",),
    "compute.instances.start": ("compute.instances.start",),
    "compute.instances.stop": ("compute.instances.stop",),
    "compute.instances.addAccessConfig": (
        "compute.instances.addAccessConfig",
        "compute.addresses.use",
        "compute.subnetworks.useExternalIp",
    ),
    "compute.instances.deleteAccessConfig": ("compute.instances.deleteAccessConfig",),
    "compute.instances.setMetadata": ("compute.instances.setMetadata",),
    "compute.instances.setLabels": ("compute.instances.setLabels",),
    "compute.instances.setMachineType": ("compute.instances.setMachineType",),
    "compute.instances.setScheduling": ("compute.instances.setScheduling",),
    "compute.instances.getSerialPortOutput": ("compute.instances.getSerialPortOutput",),
    "compute.instances.getGuestAttributes": ("compute.instances.getGuestAttributes",),
    "compute.addresses.get": ("compute.addresses.get",),
    "compute.addresses.list": ("compute.addresses.list",),
    "compute.zoneOperations.get": ("compute.zoneOperations.get",),
    "compute.zoneOperations.wait": ("compute.zoneOperations.get",),
}


def resource_of(path: str) -> str:
    """The resource a Compute URL names, as the 403 message quotes it: `projects/P/zones/Z/
    instances/VM` for `/compute/v1/projects/P/zones/Z/instances/VM/start`."""
    parts = path.split("/compute/v1/", 1)[-1].strip("/").split("/")
    return "/".join(parts[:6] if len(parts) >= 6 else parts)


def check(api: str, path: str, granted: frozenset[str] | None) -> None:
    """Raise Compute's 403 when the caller lacks a permission the method needs."""
    if granted is None:
        return
    for permission in REQUIRED.get(api, ()):
        if permission not in granted:
            raise ApiError(
                403,
                "forbidden",
                f"Required '{permission}' permission for '{resource_of(path)}'",
            )
