"""The service's perimeter: bind policy, bearer token, Host allow-list, origin checks, body limits, headers.

One pure-ASGI middleware (`SecurityMiddleware`) wraps the whole application, outside FastAPI's own error
handling, so every response — including 500s and the 401/403/413 answered here — carries the same
security headers, and nothing reaches an endpoint before these checks pass:

1. Host allow-list (DNS-rebinding defence, cf. Ollama CVE-2024-28224): the Host header must name a
   loopback address (or an explicitly allowed name) and, when it carries a port, our port.
2. Origin / Sec-Fetch-Site: a browser page on another site can never drive the service; no CORS headers
   are ever sent, so browsers also refuse to hand responses to such pages.
3. Bearer token, compared in constant time; only `/v1/health` is open.
4. Body limits per route: a declared Content-Length over the limit answers 413 at once; a streamed body
   is counted as it arrives and stops with 413 the moment it passes the limit.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from .config import Limits
from .errors import ApiError, error_body

log = logging.getLogger("pointillist.server")

OPEN_PATHS = frozenset({"/v1/health"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{32,512}")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityError(ValueError):
    """A launch configuration the service refuses (printed as one `error:` line)."""


# ------------------------------------------------------------------------------------------ bind
def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool, token_from_file: bool) -> None:
    """Loopback by default; anything else needs `--allow-remote` and a token the operator chose."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise SecurityError(f"refusing to listen on {host!r}: it is not a loopback address; pass --allow-remote "
                            f"(and --token-file) to serve other machines")
    if not token_from_file:
        raise SecurityError(f"listening on {host!r} needs --token-file F holding the token clients will send")


# ----------------------------------------------------------------------------------------- token
def new_token() -> str:
    """A fresh 256-bit bearer token (one per launch)."""
    return secrets.token_urlsafe(32)


def read_token_file(path: str | os.PathLike) -> str:
    """A token an operator chose: a private regular file holding 32–512 URL-safe characters."""
    path = Path(path)
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise SecurityError(f"{path}: token file not found") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise SecurityError(f"{path}: the token file must be a regular file (not a link or folder)")
    if os.name == "posix" and info.st_mode & 0o077:
        raise SecurityError(f"{path}: the token file is readable by other users; run `chmod 600 {path}`")
    token = path.read_text(encoding="ascii", errors="replace").strip()
    if not TOKEN_RE.fullmatch(token):
        raise SecurityError(f"{path}: the token must be 32-512 characters of A-Z a-z 0-9 . _ ~ + / = -")
    return token


def token_matches(expected: str, authorization: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected.encode("utf-8"))


# ---------------------------------------------------------------------------------- host, origin
class HostPolicy:
    """Which Host headers (and browser origins) name this service."""

    def __init__(self, port: int, extra_names: tuple[str, ...] = ()):
        self.port = port
        self.names = frozenset(n.lower() for n in (*LOOPBACK_NAMES, *extra_names))

    def allows_host(self, host: str | None) -> bool:
        if not host or len(host) > 300:
            return False
        host = host.strip().lower()
        if host.startswith("["):  # [v6]:port
            end = host.find("]")
            if end < 0:
                return False
            name, rest = host[1:end], host[end + 1:]
            if rest and not rest.startswith(":"):
                return False
            port = rest[1:] if rest else None
        else:
            name, sep, port = host.partition(":")
            port = port if sep else None
            if sep and ":" in port:
                return False
        if name not in self.names:
            return False
        if port is None:
            return True
        return port.isdigit() and self.port > 0 and int(port) == self.port

    def allowed_origins(self) -> frozenset[str]:
        origins = set()
        for name in self.names:
            shown = f"[{name}]" if ":" in name else name
            origins.add(f"http://{shown}:{self.port}")
        return frozenset(origins)

    def allows_origin(self, origin: str | None, fetch_site: str | None) -> bool:
        if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
            return False
        if origin is None:
            return True
        return origin.strip().lower() in self.allowed_origins()


# ----------------------------------------------------------------------------------- body limits
class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__("payload_too_large", f"the request body is over the {limit}-byte limit for this endpoint")


def body_limit(limits: Limits, method: str, path: str) -> int:
    if method == "POST" and path == "/v1/avatars":
        return limits.max_upload_body
    if method == "PUT" and path.startswith("/v1/objects/"):
        return limits.max_object_bytes
    if method == "POST" and path == "/v1/render":
        return limits.max_render_bytes
    return limits.max_json_bytes


# ------------------------------------------------------------------------------------ middleware
class SecurityMiddleware:
    """Pure ASGI wrapper around the FastAPI app (see the module docstring for the order of checks)."""

    def __init__(self, app, *, token: str, hosts: HostPolicy, limits: Limits):
        self.app = app
        self._token = token
        self.hosts = hosts
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not k.lower().startswith(b"access-control-")
                           and k.lower() not in {h for h, _ in SECURITY_HEADERS}]
                if not any(k.lower() == b"content-type" for k, _ in headers) and message["status"] not in (204, 304):
                    headers.append((b"content-type", b"application/octet-stream"))
                headers.extend(SECURITY_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers", []):
            key = key.lower()
            if key in headers and key in (b"host", b"authorization", b"origin", b"content-length"):
                return await self._refuse(send_with_headers, "bad_request", f"duplicate {key.decode()} header")
            headers[key] = value
        text = {k: v.decode("latin-1") for k, v in headers.items() if k in
                (b"host", b"origin", b"sec-fetch-site", b"authorization", b"content-length", b"transfer-encoding")}

        if not self.hosts.allows_host(text.get(b"host")):
            return await self._refuse(send_with_headers, "forbidden_host",
                                      "the Host header does not name this service (allowed: loopback names and "
                                      "hosts given with --allowed-host, on this port)")
        if not self.hosts.allows_origin(text.get(b"origin"), text.get(b"sec-fetch-site")):
            return await self._refuse(send_with_headers, "forbidden_origin",
                                      "cross-site requests are refused; this API is for the Blender add-on and scripts")
        path = scope.get("path", "")
        if path not in OPEN_PATHS and not token_matches(self._token, text.get(b"authorization")):
            return await self._refuse(send_with_headers, "unauthorized",
                                      "missing or wrong bearer token (send `Authorization: Bearer <token>` "
                                      "with the token from the ready line)",
                                      headers={"www-authenticate": "Bearer"})

        limit = body_limit(self.limits, scope.get("method", "GET"), path)
        declared = text.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await self._refuse(send_with_headers, "bad_request", "malformed Content-Length header")
            if int(declared) > limit:
                return await self._refuse(send_with_headers, "payload_too_large",
                                          f"the request body ({int(declared)} bytes) is over the {limit}-byte "
                                          f"limit for this endpoint")
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted_receive, send_with_headers)

    @staticmethod
    async def _refuse(send, code: str, message: str, headers: dict[str, str] | None = None):
        from .errors import CODES

        body = error_body(code, message)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if code == "payload_too_large":
            raw.append((b"connection", b"close"))  # do not read the rest of an oversized body
        await send({"type": "http.response.start", "status": CODES[code][0], "headers": raw})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------- logging
class RedactingFormatter:
    """Wraps a logging formatter so the token never reaches a log line (query strings, headers, errors)."""

    def __init__(self, inner: logging.Formatter, secrets_: list[str]):
        self.inner = inner
        self.secrets = [s for s in secrets_ if s]

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def __getattr__(self, name):
        return getattr(self.inner, name)


def configure_logging(token: str, level: int = logging.INFO, stream=None) -> logging.Handler:
    """All logs to stderr, token redacted; uvicorn's loggers go through the same handler."""
    import sys

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
                                            [token]))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    return handler
