"""Every error the service answers is JSON `{"error": {"code": …, "message": …}}` with a stable code.

Codes are part of the API (the add-on switches on them); messages are for people and may change.
Nothing here ever puts a traceback, a server path or a request header into a response: an unexpected
exception answers `internal` and its traceback goes to the log (stderr) only.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("pointillist.server")

#: code -> (HTTP status, what it means). The OpenAPI description lists these.
CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request is malformed"),
    "invalid_request": (422, "a parameter or field has the wrong type or is out of range"),
    "bad_image": (400, "the uploaded image cannot be used (format, size, corrupt, no face…)"),
    "bad_options": (400, "the creation options are invalid"),
    "bad_payload": (400, "a binary render or object payload is malformed"),
    "count_mismatch": (400, "a render payload's Gaussian count differs from the registered object's"),
    "unauthorized": (401, "missing or wrong bearer token"),
    "forbidden_host": (403, "the Host header is not on the allow-list (DNS rebinding defence)"),
    "forbidden_origin": (403, "cross-site requests are refused"),
    "not_found": (404, "no such endpoint"),
    "job_not_found": (404, "no such job"),
    "avatar_not_found": (404, "no such avatar"),
    "unknown_object": (404, "an object id is not registered (register it again with PUT /v1/objects/{id})"),
    "method_not_allowed": (405, "the endpoint does not accept this method"),
    "job_finished": (409, "the job already finished and cannot be cancelled"),
    "idempotency_conflict": (409, "the Idempotency-Key was used for a different request"),
    "payload_too_large": (413, "the request body or one of its parts is over the limit"),
    "unsupported_media_type": (415, "the request's Content-Type is not accepted here"),
    "queue_full": (429, "the job queue is full; retry after the Retry-After seconds"),
    "internal": (500, "an unexpected error; details are in the server log"),
    "not_ready": (503, "the service is starting or its model failed to load"),
    "render_busy": (503, "too many renders in flight; retry after the Retry-After seconds"),
    "shutting_down": (503, "the service is shutting down"),
}

#: codes a failed job reports in its `error` (not HTTP statuses)
JOB_ERROR_CODES = {
    "bad_image": "the portrait could not be used (decoding, no face, face too small or turned…)",
    "bad_options": "the options could not make an avatar with this model",
    "incomplete_avatar": "no try made an avatar that covers the portrait's face and head; nothing was published",
    "model_error": "the generator checkpoint could not be loaded",
    "invalid_output": "the avatar produced failed validation and was not published",
    "out_of_memory": "the job ran out of memory",
    "interrupted": "the service stopped (crash, kill or shutdown) while the job was queued or running",
    "internal": "an unexpected error; details are in the server log",
}


class ApiError(Exception):
    """Raised by endpoints; rendered by `error_body` with the code's HTTP status."""

    def __init__(self, code: str, message: str, *, status: int | None = None, headers: dict[str, str] | None = None):
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or CODES[code][0]
        self.headers = headers or {}


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")


def error_response(code: str, message: str, *, status: int | None = None, headers: dict[str, str] | None = None):
    """A Starlette response (imported lazily: this module stays importable without the web stack)."""
    from starlette.responses import Response

    return Response(error_body(code, message), status_code=status or CODES[code][0],
                    media_type="application/json", headers=headers)


def install_handlers(app) -> None:
    """Map every exception FastAPI/Starlette can raise to the JSON error shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.code, exc.message, status=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        return error_response("invalid_request", _describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type", 401: "unauthorized"}.get(exc.status_code, "bad_request")
        message = CODES[code][1] if exc.status_code in (404, 405) else str(exc.detail)
        headers = dict(exc.headers or {})
        return error_response(code, message, status=min(500, exc.status_code), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response("internal", CODES["internal"][1])


def _describe_validation(errors) -> str:
    parts = []
    for err in list(errors)[:4]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
