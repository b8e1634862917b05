"""The backend service (`pointillist serve`): HTTP API, job queue, render bridge, security (DESIGN §6).

Modules, one concept each: `config` (settings and limits), `security` (bind policy, token, Host
allow-list, origin checks, body limits, headers, log redaction), `errors` (JSON errors with stable
codes), `storage` (data directory: strict ids, realpath containment, atomic publish, start-up clean-up),
`jobs` (bounded queue, one worker, persisted records, cancel), `avatars` (the pipeline runner and the
finished-avatar store), `render_payload` (binary render formats, numpy only), `render` (object store and
frame rendering), `app` (the FastAPI routes), `main` (process start, ready line, shutdown).

Importing this package loads no web framework and no torch; `create_app` and `run_serve` do.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("add_serve_arguments", "run_serve"):
        from . import main

        return getattr(main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
