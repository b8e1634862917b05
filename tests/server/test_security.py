"""Checklist items 1-4, 6, 20, 21, 22: bind policy, token, Host allow-list, origins, limits, headers, errors.

Most run against an in-process app (the same ASGI stack uvicorn serves); the bind policy and log
redaction are also checked on the real process in test_e2e.py.
"""

from __future__ import annotations

import argparse
import io
import json
import logging

import pytest
from pointillist.server import security
from pointillist.server.config import Limits
from pointillist.server.main import add_serve_arguments, build_config
from pointillist.server.security import (
    HostPolicy,
    SecurityError,
    check_bind,
    read_token_file,
    token_matches,
)

from .conftest import InProcess


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_checkpoint):
    limits = Limits(max_image_bytes=64 * 1024, max_options_bytes=1024, max_json_bytes=1024, max_render_bytes=4096,
                    max_object_bytes=8192)
    with InProcess(tmp_path_factory.mktemp("sec-data"), checkpoint=tiny_checkpoint, limits=limits,
                   raise_server_exceptions=False) as app:
        yield app


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


ALL_ROUTES = [("GET", "/v1/ready"), ("GET", "/v1/openapi.json"), ("GET", "/v1/avatars"),
              ("POST", "/v1/avatars"), ("GET", "/v1/jobs/" + "0" * 32), ("DELETE", "/v1/jobs/" + "0" * 32),
              ("GET", "/v1/avatars/" + "0" * 32 + "/bundle"), ("PUT", "/v1/objects/head"),
              ("DELETE", "/v1/objects/head"), ("POST", "/v1/render")]


# ------------------------------------------------------------------------------- item 1: bind policy
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_item01_non_loopback_bind_needs_allow_remote_and_a_token_file(host, tmp_path):
    with pytest.raises(SecurityError, match="--allow-remote"):
        check_bind(host, allow_remote=False, token_from_file=False)
    with pytest.raises(SecurityError, match="--token-file"):
        check_bind(host, allow_remote=True, token_from_file=False)
    check_bind(host, allow_remote=True, token_from_file=True)  # both given: allowed
    with pytest.raises(SecurityError):
        build_config(_args("--host", host, "--data-dir", str(tmp_path)))


def test_item01_loopback_is_the_default(tmp_path):
    config, generated = build_config(_args("--data-dir", str(tmp_path)))
    assert config.host == "127.0.0.1" and generated
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, allow_remote=False, token_from_file=False)


def test_item01_token_file_must_be_private_and_well_formed(tmp_path):
    good = tmp_path / "token"
    good.write_text("A" * 40 + "\n")
    good.chmod(0o600)
    assert read_token_file(good) == "A" * 40
    good.chmod(0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        read_token_file(good)
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(SecurityError, match="32-512"):
        read_token_file(short)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(SecurityError, match="regular file"):
        read_token_file(link)


# ------------------------------------------------------------------------------- item 2: the token
def test_item02_a_new_random_token_per_launch(tmp_path):
    tokens = {build_config(_args("--data-dir", str(tmp_path)))[0].token for _ in range(5)}
    assert len(tokens) == 5 and all(len(t) >= 43 for t in tokens)  # 256 bits, URL-safe base64


def test_item02_token_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert token_matches("s" * 43, "Bearer " + "s" * 43)
    assert not token_matches("s" * 43, "Bearer " + "s" * 42 + "x")
    assert len(calls) == 2
    assert not token_matches("s" * 43, "Basic " + "s" * 43)
    assert not token_matches("s" * 43, None) and not token_matches("s" * 43, "")


@pytest.mark.parametrize("method,path", ALL_ROUTES)
def test_item02_every_endpoint_but_health_needs_the_token(app, method, path):
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": f"Basic {app.token}"},
                    {"Authorization": app.token}):
        r = app.client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, headers, r.text)
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    assert app.client.get("/v1/health").status_code == 200  # the one open endpoint


def test_item02_only_health_is_open_in_the_published_schema(app):
    schema = app.request("GET", "/v1/openapi.json").json()
    open_ops = [(p, m) for p, ops in schema["paths"].items() for m, op in ops.items() if not op.get("security")]
    assert open_ops == [("/v1/health", "get")]


# ------------------------------------------------------------------------------- item 3: Host allow-list
@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "", "evil.example:8000", "127.0.0.1:9999",
                                  "localhost.", "127.0.0.1:8000:1", "[::1", "0.0.0.0:8000", "LOCALHOST.evil:8000"])
def test_item03_host_header_outside_the_allow_list_is_refused(app, host):
    r = app.client.get("/v1/health", headers={"Host": host})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"
    r = app.request("GET", "/v1/avatars", headers={"Host": host})  # even with the right token
    assert r.status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000", "[::1]:8000", "127.0.0.1"])
def test_item03_loopback_hosts_on_our_port_pass(app, host):
    assert app.client.get("/v1/health", headers={"Host": host}).status_code == 200


def test_item03_extra_allowed_host_names():
    policy = HostPolicy(8443, ("gpu.studio.lan",))
    assert policy.allows_host("gpu.studio.lan:8443") and not policy.allows_host("gpu.studio.lan.evil:8443")
    assert not policy.allows_host(None) and not policy.allows_host("x" * 400)


# ------------------------------------------------------------------------------- item 4: no CORS
@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Origin": "http://127.0.0.1:9999"}, {"Sec-Fetch-Site": "cross-site"},
                                     {"Sec-Fetch-Site": "same-site"},
                                     {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"}])
def test_item04_cross_site_requests_are_refused(app, headers):
    r = app.request("GET", "/v1/avatars", headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


def test_item04_preflight_gets_no_cors_headers(app):
    r = app.client.options("/v1/avatars", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert r.status_code in (403, 401, 405)
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = app.request("GET", "/v1/avatars", headers={"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200 and not [h for h in r.headers if h.lower().startswith("access-control-")]


# ------------------------------------------------------------------------------- item 6: body limits
def test_item06_declared_body_over_the_limit_is_413(app):
    r = app.request("POST", "/v1/render", content=b"\0" * 5000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = app.request("PUT", "/v1/objects/a", content=b"\0" * 9000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413


def test_item06_streamed_body_is_counted_and_stopped(app):
    def chunks():
        for _ in range(10):
            yield b"\0" * 1000  # 10 kB without a Content-Length (chunked)

    r = app.request("POST", "/v1/render", content=chunks(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_item06_multipart_part_limits(app, portrait_png):
    big = app.request("POST", "/v1/avatars", files={"image": ("p.png", b"\x89PNG" + b"\0" * 70_000, "image/png")})
    assert big.status_code == 413, big.text
    r = app.request("POST", "/v1/avatars", files={"image": ("p.png", b"\x89PNG", "image/png")},
                    data={"options": json.dumps({"seed": 1, "pad": "x" * 2000})})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_item06_malformed_content_length_is_refused(app):
    r = app.request("GET", "/v1/avatars", headers={"Content-Length": "12abc"})
    assert r.status_code in (400, 413) and r.headers["content-type"] == "application/json"


# ------------------------------------------------------------------------------- item 20: content types
def test_item20_every_response_has_an_explicit_type_and_nosniff(app):
    responses = [app.client.get("/v1/health"), app.client.get("/v1/avatars"), app.request("GET", "/v1/avatars"),
                 app.request("GET", "/nope"), app.request("PATCH", "/v1/avatars"),
                 app.request("GET", "/v1/openapi.json"), app.request("GET", "/v1/jobs/" + "0" * 32),
                 app.request("GET", "/docs"), app.request("GET", "/redoc")]
    for r in responses:
        ctype = r.headers.get("content-type", "")
        assert ctype.startswith("application/json"), (r.request.url, ctype)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert "server" not in r.headers


@pytest.mark.parametrize("payload", [b"<html><script>alert(1)</script></html>",
                                     b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
                                     b"<!DOCTYPE html><p>hi"])
def test_item20_markup_uploads_are_refused_and_never_echoed(app, payload):
    r = app.request("POST", "/v1/avatars", files={"image": ("face.png", payload, "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_image"
    assert r.headers["content-type"] == "application/json" and b"<script" not in r.content and b"<svg" not in r.content


# ------------------------------------------------------------------------------- item 21: JSON errors
def test_item21_errors_are_json_with_stable_codes(app):
    cases = {("GET", "/nope"): (404, "not_found"), ("PATCH", "/v1/avatars"): (405, "method_not_allowed"),
             ("GET", "/v1/jobs/not-an-id"): (422, "invalid_request"),
             ("GET", "/v1/jobs/" + "0" * 32): (404, "job_not_found"),
             ("GET", "/v1/avatars/" + "0" * 32 + "/bundle"): (404, "avatar_not_found"),
             ("DELETE", "/v1/objects/nobody"): (404, "unknown_object")}
    for (method, path), (status, code) in cases.items():
        r = app.request(method, path)
        assert r.status_code == status, (path, r.text)
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == code and body["error"]["message"]
    r = app.request("POST", "/v1/avatars", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_item21_an_unexpected_exception_is_a_500_without_traceback(app, monkeypatch, caplog):
    def boom():
        raise RuntimeError("secret detail /home/artist/private")

    monkeypatch.setattr(app.service.avatars, "list", boom)
    with caplog.at_level(logging.ERROR, logger="pointillist.server"):
        r = app.request("GET", "/v1/avatars")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "an unexpected error; details are in the server log"}}
    assert b"Traceback" not in r.content and b"secret" not in r.content and b"RuntimeError" not in r.content
    assert "secret detail" in caplog.text  # the log has it, for the operator


def test_item21_bad_options_are_400_with_a_message(app, portrait_png):
    for options, needle in (({"temperature": -1}, "temperature"), ({"quality": "ultra"}, "quality"),
                            ({"checkpoint": "/etc/passwd"}, "checkpoint"), ({"device": "cuda"}, "device"),
                            ({"max_points": "12"}, "max_points"), ({"seed": True}, "seed")):
        r = app.submit(portrait_png, options)
        assert r.status_code == 400, (options, r.text)
        assert r.json()["error"]["code"] == "bad_options" and needle in r.json()["error"]["message"]
    r = app.request("POST", "/v1/avatars", files={"image": ("p.png", portrait_png, "image/png")},
                    data={"options": "[1, 2"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_options"


# ------------------------------------------------------------------------------- item 22: token not logged
def test_item22_the_log_formatter_redacts_the_token():
    stream = io.StringIO()
    token = "k" * 43
    handler = security.configure_logging(token, stream=stream)
    try:
        logging.getLogger("uvicorn.access").info('%s - "GET /v1/jobs?token=%s HTTP/1.1" 401', "127.0.0.1:1", token)
        logging.getLogger("pointillist.server").error("auth header was Bearer %s", token)
        try:
            raise ValueError(f"token {token} in an exception")
        except ValueError:
            logging.getLogger("pointillist.server").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert token not in text and text.count("[redacted]") >= 3
