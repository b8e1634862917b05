"""A small HTTP client for the backend's `/v1` API (stdlib `http.client` only: nothing to install in Blender).

Every failure becomes a `BackendError` whose message an artist can act on: an unreachable backend, a
wrong token, or the server's own `{"error": {"code", "message"}}` (e.g. `bad_image` for a portrait with
no face). No proxies are consulted: the local backend is on loopback, and a remote one is named by URL.
Called from worker threads only: every call blocks for up to `timeout` seconds.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import secrets
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

USER_AGENT = "pointillist-blender"
CHUNK = 1 << 20
MAX_BUNDLE_BYTES = 2 << 30  # a bundle this large is not one the backend made


class BackendError(RuntimeError):
    """A backend call failed; `code` is the server's stable error code or a client-side one
    (`unreachable`, `bad_response`, `bad_url`, `io_error`)."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


#: what an artist should do about a server error code (the server's own message follows)
HINTS = {
    "unauthorized": "the backend refused the token: check the token in the add-on preferences",
    "forbidden_host": "the backend refused this host name: start it with --allowed-host NAME",
    "bad_image": "the portrait cannot be used",
    "bad_options": "the creation options are invalid",
    "incomplete_avatar": "no complete avatar could be made from this portrait",
    "queue_full": "the backend is busy: try again in a few seconds",
    "not_ready": "the backend is still starting",
    "payload_too_large": "the portrait file is too large",
}


def describe(code: str, message: str) -> str:
    hint = HINTS.get(code)
    return f"{hint}: {message}" if hint and message else (hint or message or code)


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError("bad_url", f"the backend URL {url!r} must look like http://host:port")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise BackendError("bad_url", f"the backend URL {url!r} has a bad port") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def encode_multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """(body, content type) for `{name: (filename or None, data, content type)}`."""
    boundary = "pointillist-" + secrets.token_hex(16)
    chunks: list[bytes] = []
    for name, (filename, data, ctype) in fields.items():
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
            disposition += f'; filename="{safe}"'
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n"
                      .encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class Client:
    """The backend at `url` with bearer `token`."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.endpoint = Endpoint.parse(url)
        self.token = token
        self.timeout = timeout
        self._kept = threading.local()  # one kept-alive connection per thread for frames (render())

    # -------------------------------------------------------------------------------- plumbing
    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.endpoint.scheme == "https" else http.client.HTTPConnection
        return cls(self.endpoint.host, self.endpoint.port, timeout=timeout or self.timeout)

    def _unreachable(self, exc: BaseException) -> BackendError:
        reason = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else \
            (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        return BackendError("unreachable", f"cannot reach the backend at {self.url} ({reason}); is it running?")

    def _headers(self, headers: dict[str, str], auth: bool) -> dict[str, str]:
        out = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        if auth:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float | None,
              auth: bool):
        headers = self._headers(headers, auth)
        conn = self._connection(timeout)
        try:
            conn.request(method, self.endpoint.prefix + path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None

    def request_json(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                     timeout: float | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": content_type} if content_type else {}
        conn, response = self._send(method, path, body, headers, timeout, auth)
        try:
            try:
                payload = response.read(16 << 20)
            except (OSError, http.client.HTTPException) as exc:
                raise BackendError("unreachable", f"the backend at {self.url} dropped the connection ({exc})") from None
        finally:
            conn.close()
        return self._decode(response.status, payload)

    def _decode(self, status: int, payload: bytes) -> dict:
        try:
            value = json.loads(payload) if payload else {}
        except ValueError:
            value = None
        if status >= 400:
            error = value.get("error") if isinstance(value, dict) else None
            if isinstance(error, dict) and "code" in error:
                code, message = str(error["code"]), str(error.get("message", ""))
                raise BackendError(code, describe(code, message), status)
            raise BackendError("bad_response", f"the backend at {self.url} answered HTTP {status} "
                                               f"({payload[:200].decode('utf-8', 'replace')!r})", status)
        if not isinstance(value, dict):
            raise BackendError("bad_response", f"the backend at {self.url} answered something that is not JSON "
                                               f"(is this URL a Pointillist backend?)", status)
        return value

    # -------------------------------------------------------------------------------- API
    def health(self, timeout: float = 5.0) -> dict:
        """Liveness; needs no token."""
        return self.request_json("GET", "/v1/health", timeout=timeout, auth=False)

    def ready(self, timeout: float = 10.0) -> dict:
        """Model loaded (503 `not_ready` while loading); also proves the token."""
        return self.request_json("GET", "/v1/ready", timeout=timeout)

    def submit(self, image_path: str | os.PathLike, options: dict | None = None) -> dict:
        path = Path(image_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BackendError("io_error", f"cannot read the portrait {path}: {exc.strerror or exc}") from None
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        fields = {"image": (path.name, data, ctype)}
        if options:
            fields["options"] = (None, json.dumps(options).encode("utf-8"), "application/json")
        body, content_type = encode_multipart(fields)
        return self.request_json("POST", "/v1/avatars", body=body, content_type=content_type, timeout=120)

    def job(self, job_id: str) -> dict:
        return self.request_json("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.request_json("DELETE", f"/v1/jobs/{job_id}")

    def download_bundle(self, avatar_id: str, dest: str | os.PathLike) -> Path:
        """Stream the bundle zip to `dest` atomically (a temp file beside it, then os.replace)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        conn, response = self._send("GET", f"/v1/avatars/{avatar_id}/bundle", None, {"Accept": "application/zip"},
                                    300, True)
        try:
            if response.status >= 400:
                self._decode(response.status, response.read(1 << 20))
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                total = 0
                with os.fdopen(fd, "wb") as fh:
                    while chunk := response.read(CHUNK):
                        total += len(chunk)
                        if total > MAX_BUNDLE_BYTES:
                            raise BackendError("bad_response", "the bundle download is larger than any avatar")
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
            except (OSError, http.client.HTTPException) as exc:
                raise BackendError("io_error", f"downloading the avatar failed: {exc}") from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        finally:
            conn.close()
        return dest

    # -------------------------------------------------------------------------------- render bridge
    def put_object(self, object_id: str, body: bytes, timeout: float = 120) -> dict:
        """Register an object's static attributes (a `PTOB` body from `render_payload.encode_object`)."""
        return self.request_json("PUT", f"/v1/objects/{object_id}", body=body,
                                 content_type="application/octet-stream", timeout=timeout)

    def render(self, body: bytes, timeout: float = 300) -> tuple[bytes, dict[str, float]]:
        """One frame (a `PTRF` body) -> (the response bytes: raw `PTIM` or PNG, as the request asked; the
        backend's own milliseconds per step from its Server-Timing header, e.g. {"parse": .., "render": ..}).

        An unknown object raises BackendError code `unknown_object` (status 404): register it and retry.
        """
        headers = self._headers({"Content-Type": "application/octet-stream",
                                 "Accept": "application/octet-stream, image/png, application/json"}, auth=True)
        for attempt in range(2):  # frames reuse one connection (a new one costs ~1 ms a frame on loopback)
            conn = getattr(self._kept, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self._kept.conn = self._connection(timeout)
            elif conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request("POST", self.endpoint.prefix + "/v1/render", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close_kept()
                # the server closes idle kept connections (a few seconds): a frame is idempotent, so one retry
                # on a fresh connection; anything else, or a failure on a fresh one, is the backend being gone
                if not fresh and attempt == 0 and isinstance(exc, _STALE_CONNECTION):
                    continue
                raise self._unreachable(exc) from None
        if response.will_close:
            self.close_kept()
        if response.status >= 400:
            self._decode(response.status, payload[: 1 << 20])
        return payload, server_timing(response.getheader("Server-Timing", ""))

    def close_kept(self) -> None:
        """Close this thread's kept-alive frame connection (the next frame opens a new one)."""
        conn = getattr(self._kept, "conn", None)
        self._kept.conn = None
        if conn is not None:
            conn.close()


_STALE_CONNECTION = (http.client.RemoteDisconnected, http.client.CannotSendRequest, http.client.BadStatusLine,
                     ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def server_timing(header: str) -> dict[str, float]:
    """`name;dur=ms, ...` (W3C Server-Timing) -> {name: ms}; entries without a readable duration are skipped."""
    out: dict[str, float] = {}
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip() == "dur":
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out
