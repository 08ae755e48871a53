"""What the metadata server knows of a VM (or of a Cloud Run task: its project, region and
service account), as a tree, and how a path reads it (docs/google-cloud.md, "The metadata
server").

A VM created with a service account (instances.insert's serviceAccounts, or one set by
setServiceAccount), and a Cloud Run task, get a token that is that account (iam/models.py): their
calls are checked against its roles. A VM of the emulator's configuration, or one made with the
`default` account, has the project's default compute account, whose token is the operator's (the
emulator as it always was).

A path's segments are the text API's names (`network-interfaces/0/access-configs/0/external-ip`);
a recursive read answers the JSON tree, whose keys are camelCase (`networkInterfaces`,
`accessConfigs`, `externalIp`), as Google's server does; attribute names are kept as given. A
directory read without `recursive` lists its entries, a trailing `/` on those that are
directories. Every answer has an ETag (a hash of its value): `wait_for_change=true` with
`last_etag` answers when the value no longer has that ETag, or at `timeout_sec`.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gcp_emulator.compute.models import Instance
    from gcp_emulator.core.state import Cloud

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class Token(dict):
    """An access token's answer (JSON, never listed as a directory)."""


def token_of(cloud: Cloud, email: str | None) -> Token:
    """The token for a VM's or a task's account (None: the operator's, any token will do)."""
    if email is None:
        access = "emulator-token"
    else:
        access = cloud.iam.token_for(f"serviceAccount:{email}")
    return Token(access_token=access, expires_in=3599, token_type="Bearer")  # noqa: S106


def accounts_tree(email: str, scopes: list[str]) -> dict[str, Any]:
    account = {"aliases": ["default"], "email": email, "scopes": scopes}
    return {"default": account, email: account}


def mac_of(inst: Instance) -> str:
    """The VM's NIC MAC: QEMU's default for the first NIC (what the QEMU guest has)."""
    return "52:54:00:12:34:56"


def project_tree(cloud: Cloud) -> dict[str, Any]:
    return {
        "attributes": {},
        "numericProjectId": cloud.cfg.project_number,
        "projectId": cloud.project,
    }


def instance_tree(cloud: Cloud, inst: Instance) -> dict[str, Any]:
    number = cloud.cfg.project_number
    default_scopes = inst.default_scopes if inst.default_scopes is not None else SCOPES
    email, scopes = inst.account or (
        f"{number}-compute@developer.gserviceaccount.com",
        default_scopes,
    )
    external = inst.external_ip()
    return {
        "attributes": dict(inst.metadata),
        "hostname": f"{inst.name}.{inst.zone}.c.{cloud.project}.internal",
        "id": int(inst.id),
        "machineType": f"projects/{number}/machineTypes/{inst.machine_type}",
        "maintenanceEvent": "NONE",
        "name": inst.name,
        "networkInterfaces": [
            {
                "accessConfigs": (
                    [{"externalIp": external, "type": "ONE_TO_ONE_NAT"}] if external else []
                ),
                "dnsServers": ["169.254.169.254"],
                "forwardedIps": [],
                "gateway": "10.128.0.1",
                "ip": inst.network_ip,
                "ipAliases": [],
                "mac": mac_of(inst),
                "network": f"projects/{number}/networks/default",
                "subnetmask": "255.255.240.0",
                "targetInstanceIps": [],
            }
        ],
        "preempted": "FALSE",
        "scheduling": {"automaticRestart": "TRUE", "onHostMaintenance": "MIGRATE"},
        "serviceAccounts": accounts_tree(email, scopes) if inst.has_account else {},
        "tags": list(inst.tags),
        "virtualClock": {"driftToken": "0"},
        "zone": f"projects/{number}/zones/{inst.zone}",
    }


def task_tree(cloud: Cloud, region: str, instance_id: str, email: str) -> dict[str, Any]:
    """What a Cloud Run task's metadata server says of it (its account, region and id)."""
    number = cloud.cfg.project_number
    return {
        "id": instance_id,
        "region": f"projects/{number}/regions/{region}",
        "zone": f"projects/{number}/zones/{region}-1",
        "serviceAccounts": accounts_tree(email, SCOPES),
    }


def camel(segment: str) -> str:
    head, *rest = segment.split("-")
    return head + "".join(p.capitalize() for p in rest)


def hyphen(key: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in key)


def lookup(
    cloud: Cloud, inst: Instance | None, path: str, task: dict[str, Any] | None = None
) -> Any:
    """The value at path ('' is the root), or None where there is nothing; for a VM (inst), a
    Cloud Run task (task: its instance tree, task_tree), or neither (the project alone)."""
    segments = [s for s in path.split("/") if s]
    tree: dict[str, Any] = {
        "project": project_tree(cloud),
        "universe": {"universeDomain": "googleapis.com"},
    }
    if inst is not None:
        tree["instance"] = instance_tree(cloud, inst)
    elif task is not None:
        tree["instance"] = task
    if segments[:2] == ["instance", "service-accounts"] and segments[3:] == ["token"]:
        accounts = tree.get("instance", {}).get("serviceAccounts", {})
        account = accounts.get(segments[2]) if len(segments) == 4 else None
        if account is None:
            return None
        # a configured VM on the default account: the operator's token (as it always was)
        legacy = inst is not None and inst.account is None and inst.from_config
        return token_of(cloud, None if legacy else account["email"])
    node: Any = tree
    in_attributes = False
    for segment in segments:
        if isinstance(node, list):
            if not segment.isdigit() or int(segment) >= len(node):
                return None
            node = node[int(segment)]
        elif isinstance(node, dict):
            key = segment if in_attributes or segment in node else camel(segment)
            if key not in node:
                return None
            in_attributes = key == "attributes"
            node = node[key]
        else:
            return None
    return node


def listing(node: Any, attributes: bool) -> str:
    """A directory's entries as the text API lists them."""
    if isinstance(node, list):
        return "".join(f"{i}/\n" for i in range(len(node)))
    lines = []
    for key in sorted(node):
        name = key if attributes else hyphen(key)
        lines.append(f"{name}/" if isinstance(node[key], (dict, list)) else name)
    return "".join(f"{line}\n" for line in lines)


def etag(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
