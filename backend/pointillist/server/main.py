"""`pointillist serve`: process start, the JSON ready line, graceful shutdown with a limit.

    pointillist serve [--host 127.0.0.1] [--port 0] [--data-dir DIR] [--token-file F] [--device auto|cpu|cuda]
                      [--checkpoint F.safetensors] [--head F.npz] [--allow-remote] [--allowed-host NAME]
                      [--shutdown-timeout S] [--max-queue N] [--log-level LEVEL]

The socket is bound here (so `--port 0` picks a free port), the app starts (start-up clean-up, worker),
and then exactly one line of JSON goes to stdout, flushed:

    {"port": 54321, "token": "…", "pid": 1234, "version": "0.1.0", "host": "127.0.0.1"}

Everything else (logs) goes to stderr, with the token redacted. SIGTERM / SIGINT stop taking requests,
wait up to `--shutdown-timeout` s for requests in flight, interrupt the running job (recorded as
`failed`/`interrupted`) and wait up to the same limit for the worker; exit code 0. Bad arguments, a
non-safetensors checkpoint, a pickled head model or an unsafe bind answer one `error:` line, exit code 2.
Heavy imports happen inside `run_serve`, so building the parser stays instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
from pathlib import Path

EXIT_USAGE = 2
ENV_CHECKPOINT = "POINTILLIST_CHECKPOINT"
ENV_DATA_DIR = "POINTILLIST_DATA_DIR"


class ServeError(Exception):
    """A launch problem the user can fix (printed as one `error:` line)."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "pointillist" / "server"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; others need --allow-remote and --token-file)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 (default) picks a free one (see the ready line)")
    parser.add_argument("--data-dir", default=os.environ.get(ENV_DATA_DIR),
                        help=f"jobs, uploads and avatars (default ${ENV_DATA_DIR} or {default_data_dir()})")
    parser.add_argument("--token-file", metavar="F",
                        help="read the bearer token from F (mode 600) instead of making a random one per launch")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (needs --token-file; put TLS in front of it)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="an extra Host header name to accept (e.g. the GPU host's DNS name); repeatable")
    parser.add_argument("--checkpoint", default=os.environ.get(ENV_CHECKPOINT), metavar="F.safetensors",
                        help=f"generator checkpoint (default ${ENV_CHECKPOINT} or the bundled one); safetensors only")
    parser.add_argument("--head", metavar="F.npz", help="head model .npz (default: the bundled template)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="S",
                        help="on SIGTERM/SIGINT, wait at most S seconds for requests and at most S for the job")
    parser.add_argument("--max-queue", type=int, default=8, metavar="N", help="queued jobs before 429 (default 8)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _check_checkpoint(path: str | None) -> Path | None:
    """Weights only from safetensors: no pickle is ever opened, so nothing in a checkpoint can run."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ServeError(f"{p}: no such checkpoint file")
    if p.suffix.lower() != ".safetensors":
        raise ServeError(f"{p}: the service loads generator weights only from .safetensors files (never pickles); "
                         f"convert it with `pointillist checkpoint pack`")
    from ..model.checkpoint import read_generator_info
    from ..model.image_encoder import CheckpointError

    try:
        read_generator_info(p)  # header only
    except (CheckpointError, ValueError, OSError) as exc:
        raise ServeError(str(exc)) from None
    return p.resolve()


def _check_head(path: str | None) -> Path | None:
    """Head models only as .npz read with allow_pickle=False; FLAME pickles go through `head import-flame`."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ServeError(f"{p}: no such head model file")
    from ..head.data import HeadModelData

    try:
        HeadModelData.load(p)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable head model
        hint = " (a FLAME .pkl must be converted once with `pointillist head import-flame`)" \
            if p.suffix.lower() in (".pkl", ".pickle") else ""
        raise ServeError(f"{p}: not a usable head-model .npz{hint}: {exc}") from None
    return p.resolve()


def build_config(args: argparse.Namespace):
    """(ServerConfig with port 0 replaced later, token generated?)."""
    from .config import Limits, ServerConfig
    from .security import check_bind, new_token, read_token_file

    check_bind(args.host, allow_remote=args.allow_remote, token_from_file=bool(args.token_file))
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port {args.port} must be 0..65535")
    if not 0 < args.shutdown_timeout <= 600:
        raise ServeError("--shutdown-timeout must be in (0, 600] seconds")
    if not 1 <= args.max_queue <= 1000:
        raise ServeError("--max-queue must be 1..1000")
    token = read_token_file(args.token_file) if args.token_file else new_token()
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    config = ServerConfig(data_dir=data_dir, token=token, host=args.host, port=args.port,
                          allowed_hosts=tuple(args.allowed_host), checkpoint=_check_checkpoint(args.checkpoint),
                          head=_check_head(args.head), device=args.device, shutdown_timeout_s=args.shutdown_timeout,
                          limits=Limits(max_queue=args.max_queue))
    return config, not args.token_file


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it every response (headers, then body) waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    import logging
    from dataclasses import replace

    from .security import SecurityError, configure_logging
    from .storage import StorageError

    try:
        config, generated = build_config(args)
    except (ServeError, SecurityError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    configure_logging(config.token, getattr(logging, args.log_level.upper()))
    log = logging.getLogger("pointillist.server")

    import uvicorn

    from .. import __version__
    from .app import create_app

    try:
        sock = _bind(config.host, config.port)
        config = replace(config, port=sock.getsockname()[1])
        app = create_app(config)
    except (ServeError, StorageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    ready = {"port": config.port, "token": config.token if generated else None, "pid": os.getpid(),
             "version": __version__, "host": config.host}

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                sys.stdout.write(json.dumps(ready) + "\n")
                sys.stdout.flush()
                log.info("listening on %s:%d (data in %s)", config.host, config.port, config.data_dir)

    uv_config = uvicorn.Config(app, log_config=None, access_log=True, server_header=False, proxy_headers=False,
                               ws="none", lifespan="on", h11_max_incomplete_event_size=64 * 1024,
                               timeout_graceful_shutdown=max(1, math.ceil(config.shutdown_timeout_s)))
    server = Server(uv_config)
    # uvicorn re-raises the stop signal after a graceful exit; make that a no-op so the exit code is 0
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    code = 0 if server.started else 1
    if app.service.jobs.worker_alive:  # did not stop within the limit: do not wait for it at exit
        log.error("exiting with the worker still busy")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code
