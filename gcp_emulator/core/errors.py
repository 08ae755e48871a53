"""Errors as each Google API shapes them: Compute's `{"error": {"code", "message", "errors":
[{"reason", "domain", "message"}]}}`, and the google.rpc shape of the others (Secret Manager, Cloud
Run, Cloud Scheduler, IAM, ...): `{"error": {"code", "message", "status", "details"}}`."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response


class ApiError(Exception):
    """An error answer: HTTP status, Compute `reason` (or Secret Manager `status`), message."""

    def __init__(
        self, code: int, reason: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or []  # google.rpc's details (ErrorInfo, ...)


RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
FAULT_REASON = {429: "rateLimitExceeded", 403: "forbidden", 404: "notFound", 400: "badRequest"}

# the APIs whose errors take Compute's shape; every other answers in the google.rpc shape
COMPUTE_SHAPED = ("compute",)


def not_found(path: str) -> ApiError:
    """Compute's 404 for a resource it does not have."""
    return ApiError(404, "notFound", f"The resource '{path}' was not found")


def api_family(api: str) -> str:
    return api.split(".", 1)[0]


def error_response(api: str, err: ApiError) -> Response:
    if api_family(api) in COMPUTE_SHAPED and err.code != 401:
        body: dict[str, Any] = {
            "code": err.code,
            "message": err.message,
            "errors": [{"message": err.message, "domain": "global", "reason": err.reason}],
        }
    else:
        body = {
            "code": err.code,
            "message": err.message,
            # a 400 is INVALID_ARGUMENT, but where the reason says it is a precondition
            "status": "FAILED_PRECONDITION"
            if err.reason == "failedPrecondition"
            else RPC_STATUS.get(err.code, "UNKNOWN"),
        }
        if err.details:
            body["details"] = err.details
    return JSONResponse({"error": body}, status_code=err.code)


def fault_error(status: int, message: str) -> ApiError:
    if not message:
        message = (
            "Rate Limit Exceeded"
            if status == 429
            else "Internal error. Please try again."
            if status >= 500
            else f"Injected error {status}"
        )
    reason = FAULT_REASON.get(status, "backendError")
    return ApiError(status, reason, message)
