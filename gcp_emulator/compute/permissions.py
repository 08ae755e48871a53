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

from typing import TYPE_CHECKING, Any

from gcp_emulator.core.errors import ApiError

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud

# The permissions each emulated Compute method needs (a method may need several: adding an
# access config uses the address and the subnetwork's external IP too). From Google's
# per-method table (Compute Engine IAM permissions reference); "recalled" marks entries taken
# from memory of that table and not checked against it here.
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
    # what a deployment creates. insert: a VM with a new boot disk in a subnet; what its body
    # sets needs more (INSERT_SETS, checked by the handler: insert_permissions)
    "compute.instances.insert": (
        "compute.instances.create",
        "compute.disks.create",
        "compute.subnetworks.use",
    ),
    # recalled: the auto-deleted boot disk's compute.disks.delete is not checked
    "compute.instances.delete": ("compute.instances.delete",),
    "compute.instances.aggregatedList": ("compute.instances.list",),
    # + iam.serviceAccounts.actAs on the account (checked by the handler, through IAM)
    "compute.instances.setServiceAccount": ("compute.instances.setServiceAccount",),
    "compute.instances.setTags": ("compute.instances.setTags",),
    "compute.addresses.insert": ("compute.addresses.create",),
    "compute.addresses.delete": ("compute.addresses.delete",),
    "compute.addresses.aggregatedList": ("compute.addresses.list",),
    # recalled: a rule's change is a change of its network's policy too
    "compute.firewalls.insert": ("compute.firewalls.create", "compute.networks.updatePolicy"),
    "compute.firewalls.get": ("compute.firewalls.get",),
    "compute.firewalls.list": ("compute.firewalls.list",),
    "compute.firewalls.patch": ("compute.firewalls.update", "compute.networks.updatePolicy"),
    "compute.firewalls.delete": ("compute.firewalls.delete", "compute.networks.updatePolicy"),
    "compute.networks.get": ("compute.networks.get",),
    "compute.networks.list": ("compute.networks.list",),
    "compute.subnetworks.get": ("compute.subnetworks.get",),
    "compute.regionOperations.get": ("compute.regionOperations.get",),
    "compute.regionOperations.wait": ("compute.regionOperations.get",),
    "compute.globalOperations.get": ("compute.globalOperations.get",),
    "compute.globalOperations.wait": ("compute.globalOperations.get",),
    "compute.zones.get": ("compute.zones.get",),
    "compute.projects.get": ("compute.projects.get",),
    "compute.machineTypes.get": ("compute.machineTypes.get",),
    # public images (debian-cloud, ...) are readable by every authenticated caller: their
    # compute.images.getFromFamily / useReadOnly are granted on the image's own project
    "compute.images.getFromFamily": (),
    "compute.images.get": (),
    "compute.imageFamilyViews.get": (),
}

# instances.insert: what a field of its body sets needs besides REQUIRED's (the documented
# "if you set X" permissions of instances.insert)
INSERT_SETS = {
    "metadata": "compute.instances.setMetadata",
    "tags": "compute.instances.setTags",
    "labels": "compute.instances.setLabels",
    "serviceAccounts": "compute.instances.setServiceAccount",
    "accessConfigs": "compute.subnetworks.useExternalIp",
    "natIP": "compute.addresses.use",  # a static external address
}


def insert_permissions(body: dict[str, Any]) -> list[str]:
    """The permissions an instances.insert body needs beyond REQUIRED's, by what it sets."""
    nics = [n for n in body.get("networkInterfaces") or [] if isinstance(n, dict)]
    configs = [c for n in nics for c in n.get("accessConfigs") or [] if isinstance(c, dict)]
    given = {
        "metadata": bool((body.get("metadata") or {}).get("items")),
        "tags": bool((body.get("tags") or {}).get("items")),
        "labels": bool(body.get("labels")),
        "serviceAccounts": bool(body.get("serviceAccounts")),
        "accessConfigs": bool(configs),
        "natIP": any(c.get("natIP") for c in configs),
    }
    return [INSERT_SETS[k] for k, v in given.items() if v]


def require(cloud: Cloud, api: str, authorization: str, path: str, permissions: list[str]) -> None:
    """What the front end checks for a route's REQUIRED permissions, for more of them: the
    configured `permissions`, then the caller's IAM roles."""
    granted = cloud.cfg.permissions
    principal = cloud.iam.principal_of(authorization)
    for permission in permissions:
        if granted is not None and permission not in granted:
            raise ApiError(
                403,
                "forbidden",
                f"Required '{permission}' permission for '{resource_of(path)}'",
            )
        cloud.iam.require(principal, permission, (resource_of(path), None), api)


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
