"""The stdlib client: URL parsing, multipart bodies the backend's parser accepts, and error messages."""

from __future__ import annotations

import json
import socket

import pytest

from addon.http_client import BackendError, Client, Endpoint, describe, encode_multipart


def test_endpoint_parsing():
    assert Endpoint.parse("http://127.0.0.1:8765") == Endpoint("http", "127.0.0.1", 8765, "")
    assert Endpoint.parse("https://gpu.example/api/") == Endpoint("https", "gpu.example", 443, "/api")
    for bad in ("", "ftp://x", "127.0.0.1:80", "http://x:notaport"):
        with pytest.raises(BackendError, match="backend URL"):
            Endpoint.parse(bad)


def test_multipart_round_trips_through_the_email_parser():
    from email.parser import BytesParser
    from email.policy import HTTP

    body, ctype = encode_multipart({"image": ("a\"b.png", b"\x89PNG\r\n--x", "image/png"),
                                    "options": (None, b'{"seed": 1}', "application/json")})
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["image"].get_content() == b"\x89PNG\r\n--x" and parts["image"].get_filename() == "a_b.png"
    assert json.loads(parts["options"].get_payload(decode=True)) == {"seed": 1}


def test_an_unreachable_backend_says_so():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError, match="cannot reach the backend") as info:
        Client(f"http://127.0.0.1:{port}", "t").health()
    assert info.value.code == "unreachable"


def test_server_error_codes_get_a_hint_before_the_servers_message():
    assert describe("bad_image", "no face found") == "the portrait cannot be used: no face found"
    assert describe("unknown_code", "msg") == "msg"
    with pytest.raises(BackendError) as info:
        Client("http://127.0.0.1:1", "t")._decode(401, b'{"error": {"code": "unauthorized", "message": "wrong"}}')
    assert info.value.code == "unauthorized" and "refused the token" in str(info.value)
    with pytest.raises(BackendError, match="HTTP 502"):
        Client("http://127.0.0.1:1", "t")._decode(502, b"<html>bad gateway</html>")
    with pytest.raises(BackendError, match="not JSON"):
        Client("http://127.0.0.1:1", "t")._decode(200, b"<html>")


def test_submit_of_a_missing_file_is_an_io_error(tmp_path):
    with pytest.raises(BackendError, match="cannot read the portrait"):
        Client("http://127.0.0.1:1", "t").submit(tmp_path / "missing.png")


def test_server_timing_header_is_read_leniently():
    from addon.http_client import server_timing

    assert server_timing("parse;dur=0.18, render;dur=44.90") == {"parse": 0.18, "render": 44.9}
    assert server_timing('cache;desc="hit", db;dur=abc, total;dur=3') == {"total": 3.0}
    assert server_timing("") == {}


class _FrameServer:
    """A keep-alive HTTP/1.1 server answering POST /v1/render, counting connections; `close_after` makes it
    drop each connection after answering (as a server does with idle kept connections)."""

    def __init__(self, close_after: bool = False):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.connections = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                owner.connections += 1

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Server-Timing", "render;dur=1.5")
                self.end_headers()
                self.wfile.write(body[::-1])
                if close_after:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("close_after", [False, True])
def test_frames_reuse_one_connection_and_survive_the_server_closing_it(close_after):
    server = _FrameServer(close_after)
    try:
        client = Client(server.url, "t" * 43)
        for i in range(3):
            payload, timing = client.render(b"frame%d" % i)
            assert payload == (b"frame%d" % i)[::-1] and timing == {"render": 1.5}
        # kept alive: one connection for three frames; a server that closes it costs a reconnect, never a failure
        assert server.connections == (3 if close_after else 1)
    finally:
        server.stop()
    client.close_kept()  # (the stdlib test server keeps serving open connections after shutdown)
    with pytest.raises(BackendError, match="cannot reach the backend") as info:
        client.render(b"after the server stopped")
    assert info.value.code == "unreachable"
