"""A stand-in for `python -m pointillist.server` (stdlib only, starts in milliseconds).

Run as `python -m pointillist.server …` with this file's folder arranged as a package by `conftest.py`:
it binds 127.0.0.1:0, spawns a sleeping grandchild (to prove the whole tree is stopped), prints the JSON
ready line and answers /v1/health and /v1/ready (401 JSON error for a wrong token). FAKE_MODE=crash exits
with an error line on stderr instead; FAKE_MODE=garbage prints a non-JSON line.
"""

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "x" * 43


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/health":
            return self._send(200, {"status": "ok", "version": "fake"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}})
        if self.path == "/v1/ready":
            return self._send(200, {"ready": True})
        return self._send(404, {"error": {"code": "not_found", "message": "no such endpoint"}})


def main():
    mode = os.environ.get("FAKE_MODE", "")
    if mode == "crash":
        print("error: the fake backend refuses to start", file=sys.stderr, flush=True)
        return 2
    if mode == "garbage":
        print("hello, not json", flush=True)
        return 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_CHILD_PID_FILE"], "w") as fh:
        fh.write(str(child.pid))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"port": server.server_address[1], "token": TOKEN, "pid": os.getpid(), "version": "fake",
                      "host": "127.0.0.1"}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
