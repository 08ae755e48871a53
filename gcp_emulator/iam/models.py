"""IAM's state and its check of every call: service accounts, custom roles, the project's IAM
policy and the policies on resources (a secret, a Cloud Run job, a service account), and who
each access token is (docs/google-cloud.md, "IAM: what each call needs").

Who calls: a token the emulator minted for a service account (through the metadata server of a
VM or of a Cloud Run task, or for Cloud Scheduler's OAuth) is that account; any other token is the
operator, who owns the project (`OPERATOR`: what `gcloud auth login` is to a new project). A call
of a service account is allowed when a binding on the project, or on the resource the call is
about, grants it a role that holds the permission the call needs (predefined roles:
predefined_roles.json; custom roles: the project's); else 403, naming the permission, in the shape
of the API that refused it. The operator's calls are not checked."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcp_emulator.core.errors import ApiError
from gcp_emulator.core.util import decode_bytes

if TYPE_CHECKING:
    from gcp_emulator.core.state import Cloud

OPERATOR = "user:operator@example.com"
PREDEFINED = json.loads((Path(__file__).parent / "predefined_roles.json").read_text())["roles"]
BASIC = ("roles/owner", "roles/editor")  # everything (what the emulator knows of them)


def new_etag() -> str:
    """A policy's etag: 8 bytes, base64 (gcloud decodes it, and sends it back URL-safe)."""
    return base64.b64encode(secrets.token_bytes(8)).decode()


def same_etag(given: str, current: str) -> bool:
    try:
        return decode_bytes(given) == base64.b64decode(current)
    except ValueError:
        return False


@dataclass
class Policy:
    """An IAM policy: bindings of roles to members (conditions kept, not evaluated)."""

    bindings: list[dict[str, Any]] = field(default_factory=list)
    version: int = 1
    etag: str = field(default_factory=new_etag)

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"version": self.version, "etag": self.etag}
        if self.bindings:
            body["bindings"] = [dict(b) for b in self.bindings]
        return body

    def set(self, body: dict[str, Any]) -> Policy:
        """setIamPolicy's `policy`: refused when its etag is not the current one (a concurrent
        change: 409 ABORTED, as Google answers it)."""
        given = body.get("etag")
        if given and not same_etag(str(given), self.etag):
            raise ApiError(
                409,
                "aborted",
                "There were concurrent policy changes. Please retry the whole read-modify-write "
                "with exponential backoff.",
            )
        bindings = body.get("bindings") or []
        if not isinstance(bindings, list) or not all(
            isinstance(b, dict) and isinstance(b.get("role"), str) for b in bindings
        ):
            raise ApiError(400, "invalid", "Invalid JSON payload: policy.bindings.")
        self.bindings = [
            {k: v for k, v in b.items() if k in ("role", "members", "condition")}
            for b in bindings
            if b.get("members")
        ]
        self.version = int(body.get("version") or 1)
        self.etag = new_etag()
        return self

    def grants(self, member: str) -> list[str]:
        """The roles this policy binds to member."""
        return [b["role"] for b in self.bindings if member in (b.get("members") or [])]


@dataclass
class ServiceAccount:
    email: str
    project: str
    display_name: str = ""
    description: str = ""
    unique_id: str = field(default_factory=lambda: str(10**20 + secrets.randbelow(10**20)))
    disabled: bool = False
    policy: Policy = field(default_factory=Policy)
    etag: str = field(default_factory=new_etag)

    def json(self, project_number: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"projects/{self.project}/serviceAccounts/{self.email}",
            "projectId": self.project,
            "uniqueId": self.unique_id,
            "email": self.email,
            "etag": self.etag,
            "oauth2ClientId": self.unique_id,
        }
        if self.display_name:
            body["displayName"] = self.display_name
        if self.description:
            body["description"] = self.description
        if self.disabled:
            body["disabled"] = True
        del project_number
        return body


@dataclass
class Role:
    name: str  # projects/P/roles/ID
    title: str
    description: str
    permissions: list[str]
    stage: str = "GA"
    deleted: bool = False
    etag: str = field(default_factory=new_etag)

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "includedPermissions": sorted(self.permissions),
            "stage": self.stage,
            "etag": self.etag,
        }
        if self.description:
            body["description"] = self.description
        if self.deleted:
            body["deleted"] = True
        return body


class Iam:
    """IAM's backend: accounts by email, the project's custom roles by name, its policy, and
    the tokens it minted."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.accounts: dict[str, ServiceAccount] = {}
        self.roles: dict[str, Role] = {}
        self.policy = Policy(bindings=[{"role": "roles/owner", "members": [OPERATOR]}], version=1)
        self.tokens: dict[str, str] = {}  # token -> principal
        self.revoked: set[str] = set()  # the tokens of deleted accounts

    @property
    def project(self) -> str:
        return self.cloud.project

    # -- who calls ---------------------------------------------------------------------------

    def principal_of(self, authorization: str) -> str:
        """The caller of a request, by its bearer token."""
        token = authorization.removeprefix("Bearer ").strip()
        if token in self.revoked:  # a deleted account's: not the operator's, nobody's
            raise ApiError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        return self.tokens.get(token, OPERATOR)

    def token_for(self, principal: str) -> str:
        """An access token that is `principal` (the same one while it lasts)."""
        for token, who in self.tokens.items():
            if who == principal:
                return token
        token = "ya29.emulator-" + secrets.token_urlsafe(24)
        self.tokens[token] = principal
        return token

    @staticmethod
    def principal_for_account(email: str) -> str:
        return f"serviceAccount:{email}" if email else OPERATOR

    # -- the check ---------------------------------------------------------------------------

    def role_permissions(self, role: str) -> set[str] | None:
        """The permissions role holds (None: all of them, for a basic role)."""
        if role in BASIC:
            return None
        if role in PREDEFINED:
            return set(PREDEFINED[role]["includedPermissions"])
        custom = self.roles.get(role)
        if custom is not None and not custom.deleted:
            return set(custom.permissions)
        return set()

    def allowed(self, principal: str, permission: str, policies: list[Policy]) -> bool:
        if principal == OPERATOR:
            return True
        for policy in [self.policy, *policies]:
            for role in policy.grants(principal) + policy.grants("allUsers"):
                held = self.role_permissions(role)
                if held is None or permission in held:
                    return True
        return False

    def require(
        self, principal: str, permission: str, resource: tuple[str, Policy | None], api: str = ""
    ) -> None:
        """Raise the API's 403 unless principal may `permission` on resource (name, policy)."""
        name, policy = resource
        if self.allowed(principal, permission, [policy] if policy is not None else []):
            return
        if api.startswith("compute."):
            raise ApiError(403, "forbidden", f"Required '{permission}' permission for '{name}'")
        raise ApiError(
            403,
            "forbidden",
            f"Permission '{permission}' denied on resource '{name}' (or it may not exist).",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "IAM_PERMISSION_DENIED",
                    "domain": "iam.googleapis.com",
                    "metadata": {"permission": permission, "resource": name},
                }
            ],
        )

    def require_act_as(self, principal: str, email: str, api: str = "") -> None:
        """What running something as a service account needs of whoever sets it up (a Cloud
        Run job's account, a scheduler job's token): iam.serviceAccounts.actAs on it, granted
        on the project or on the account (roles/iam.serviceAccountUser)."""
        account = self.accounts.get(email)
        self.require(
            principal,
            "iam.serviceAccounts.actAs",
            (f"projects/-/serviceAccounts/{email}", account.policy if account else None),
            api,
        )

    # -- service accounts --------------------------------------------------------------------

    def account(self, email: str) -> ServiceAccount:
        account = self.accounts.get(email)
        if account is None:
            raise ApiError(404, "notFound", "Unknown service account")
        return account

    def create_account(self, account_id: str, body: dict[str, Any]) -> ServiceAccount:
        if not (6 <= len(account_id) <= 30) or not account_id[0].isalpha():
            raise ApiError(
                400,
                "invalid",
                f"Invalid account id {account_id!r}: 6 to 30 lowercase letters, digits or "
                "hyphens, starting with a letter.",
            )
        email = f"{account_id}@{self.project}.iam.gserviceaccount.com"
        if email in self.accounts:
            raise ApiError(
                409,
                "alreadyExists",
                f"Service account {account_id} already exists within project "
                f"projects/{self.project}.",
            )
        account = ServiceAccount(
            email,
            self.project,
            display_name=str(body.get("displayName") or ""),
            description=str(body.get("description") or ""),
        )
        self.accounts[email] = account
        return account

    def delete_account(self, email: str) -> None:
        self.account(email)
        del self.accounts[email]
        for token in [t for t, who in self.tokens.items() if who == f"serviceAccount:{email}"]:
            del self.tokens[token]
            self.revoked.add(token)

    # -- roles -------------------------------------------------------------------------------

    def role(self, name: str) -> Role:
        role = self.roles.get(name)
        if role is None:
            raise ApiError(404, "notFound", f"The role named {name} was not found.")
        return role

    def create_role(self, role_id: str, body: dict[str, Any]) -> Role:
        name = f"projects/{self.project}/roles/{role_id}"
        existing = self.roles.get(name)
        if existing is not None and existing.deleted:
            raise ApiError(
                400,
                "failedPrecondition",
                f"You can't create a role with role_id ({role_id}) where there is an existing role "
                "with that role_id in a deleted state.",
            )
        if existing is not None:
            raise ApiError(
                409,
                "alreadyExists",
                f"A role named {role_id} in projects/{self.project} already exists.",
            )
        role = Role(
            name,
            str(body.get("title") or role_id),
            str(body.get("description") or ""),
            [str(p) for p in body.get("includedPermissions") or []],
            str(body.get("stage") or "GA"),
        )
        self.roles[name] = role
        return role

    def update_role(self, name: str, body: dict[str, Any], mask: list[str]) -> Role:
        role = self.role(name)
        if role.deleted:
            raise ApiError(400, "failedPrecondition", f"You can't update a deleted role: {name}.")
        given = body.get("etag")
        if given and not same_etag(str(given), role.etag):
            raise ApiError(409, "aborted", "The role was changed meanwhile: read it again.")
        fields = mask or ["title", "description", "includedPermissions", "stage"]
        if "title" in fields and "title" in body:
            role.title = str(body["title"])
        if "description" in fields and "description" in body:
            role.description = str(body["description"])
        if "includedPermissions" in fields and "includedPermissions" in body:
            role.permissions = [str(p) for p in body["includedPermissions"] or []]
        if "stage" in fields and "stage" in body:
            role.stage = str(body["stage"])
        role.etag = new_etag()
        return role

    def delete_role(self, name: str) -> Role:
        """Soft: the role stays, `deleted`, undeletable for 7 days (its id not reusable)."""
        role = self.role(name)
        role.deleted = True
        role.etag = new_etag()
        return role

    def undelete_role(self, name: str) -> Role:
        role = self.role(name)
        role.deleted = False
        role.etag = new_etag()
        return role

    def state_json(self) -> dict[str, Any]:
        return {
            "iam": {
                "accounts": sorted(self.accounts),
                "roles": {n: sorted(r.permissions) for n, r in self.roles.items() if not r.deleted},
                "policy": self.policy.json().get("bindings", []),
            }
        }
