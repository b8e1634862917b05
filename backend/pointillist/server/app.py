"""The HTTP API (`/v1`), assembled from the service parts; OpenAPI at `/v1/openapi.json`.

    GET    /v1/health                    liveness, no token
    GET    /v1/ready                     model loaded and worker alive (503 `not_ready` otherwise)
    POST   /v1/avatars                   multipart `image` (+ `options` JSON) -> 202 job; Idempotency-Key honoured
    GET    /v1/avatars                   finished avatars
    GET    /v1/avatars/{avatar_id}/bundle  the bundle zip
    GET    /v1/jobs/{job_id}             state, progress, stage, error, avatar_id
    DELETE /v1/jobs/{job_id}             cooperative cancel
    PUT    /v1/objects/{object_id}       register a render object's static attributes (binary or PLY)
    DELETE /v1/objects/{object_id}       forget it
    POST   /v1/render                    one frame of posed registered objects -> PNG or raw float32

No HTML is served (no /docs), no CORS; see `security.py` for what guards every request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Header, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .avatars import AvatarRunner, AvatarStore
from .config import ServerConfig
from .errors import CODES, ApiError, install_handlers
from .jobs import JobManager
from .render import ObjectStore, Renderer, object_from_ply, payload_limits
from .render_payload import PayloadError, parse_object, parse_render
from .security import BodyTooLarge, HostPolicy, SecurityMiddleware
from .storage import DataDir

log = logging.getLogger("pointillist.server")

JOB_ID = r"^[0-9a-f]{32}$"
OBJECT_ID = r"^[A-Za-z0-9_-]{1,64}$"
IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:-]{1,128}$"


# ------------------------------------------------------------------------------------ schemas
class ErrorDetail(BaseModel):
    code: str = Field(description="stable error code: " + ", ".join(sorted(CODES)))
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class AvatarOptions(BaseModel):
    """The options of `pointillist create` a client may set (the server picks checkpoint and device)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    quality: Literal["draft", "standard", "high"] | None = None
    max_points: int | None = Field(None, ge=64, le=8192)  # fewer cannot make a complete head (CompletenessCheck)
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    refine_steps: int | None = Field(None, ge=0, le=5000)
    carve: bool | None = None
    anchor: bool | None = None


class JobView(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1)
    stage: str
    error: ErrorDetail | None = None
    avatar_id: str | None = None
    created_at: str
    updated_at: str
    cancel_requested: bool = False
    options: dict[str, Any] = {}
    queue_position: int | None = None
    #: how a succeeded job's avatar differs from what was asked (e.g. made by a fallback); shown to the artist
    warnings: list[str] = []


class AvatarRecord(BaseModel):
    avatar_id: str
    job_id: str | None = None
    created_at: str | None = None
    gaussians: int | None = None
    points: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    warnings: list[str] = []


class AvatarList(BaseModel):
    avatars: list[AvatarRecord]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class Ready(BaseModel):
    ready: bool
    version: str
    model: dict[str, Any]
    queue: dict[str, Any]
    render_objects: int


class ObjectInfo(BaseModel):
    object_id: str
    count: int
    sh_degree: int
    colors: Literal["rgb", "sh"]
    rest_rotations: bool
    bones: int = Field(0, description="bones of its skinning block (0: frames send one rotation per Gaussian)")


class Deleted(BaseModel):
    object_id: str
    deleted: bool


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorBody, "description": ", ".join(c for c, (st, _) in CODES.items() if st == s)}
            for s in statuses}


GUARDED = (401, 403, 413, 422, 500)
BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
OBJECT_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/x-ply": {"schema": {"type": "string", "format": "binary"}}}}}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP, TIFF or BMP"},
                   "options": {"type": "string", "description": "JSON object of AvatarOptions"}}}}}}}


# ------------------------------------------------------------------------------------ service
@dataclass
class Service:
    config: ServerConfig
    storage: DataDir
    jobs: JobManager
    avatars: AvatarStore
    objects: ObjectStore
    renderer: Renderer
    hosts: HostPolicy
    runner: Any


def render_device(device: str) -> str:
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def create_app(config: ServerConfig, *, runner=None) -> SecurityMiddleware:
    """The ASGI app (security middleware around FastAPI); `.service` holds the parts, `.api` the FastAPI app."""
    storage = DataDir(config.data_dir)
    storage.lock()
    runner = runner or AvatarRunner(storage, checkpoint=config.checkpoint, head=config.head, device=config.device)
    limits = config.limits
    jobs = JobManager(storage, runner, max_queue=limits.max_queue, retry_after_s=limits.retry_after_s)
    objects = ObjectStore(limits, device=render_device(config.device))
    service = Service(config=config, storage=storage, jobs=jobs, avatars=AvatarStore(storage), objects=objects,
                      renderer=Renderer(objects, limits), hosts=HostPolicy(config.port, config.allowed_hosts),
                      runner=runner)

    @asynccontextmanager
    async def lifespan(_api):
        jobs.start()
        try:
            yield
        finally:
            stopped = await run_in_threadpool(jobs.shutdown, config.shutdown_timeout_s)
            service.renderer.close()
            if stopped:  # a worker still running keeps the folder locked until the process ends
                storage.unlock()
            log.info("shut down (%s)", "worker stopped" if stopped else "worker still busy; abandoned")

    api = FastAPI(title="Pointillist backend", version=__version__, openapi_url="/v1/openapi.json",
                  docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Portrait -> Gaussian-splat head avatar jobs and a binary render bridge. Every "
                              "endpoint but /v1/health needs `Authorization: Bearer <token>`. Errors are "
                              "`{\"error\": {\"code\", \"message\"}}`. Binary formats: "
                              "`pointillist.server.render_payload`.")
    install_handlers(api)
    _routes(api, service)
    _document_security(api)
    app = SecurityMiddleware(api, token=config.token, hosts=service.hosts, limits=limits)
    app.service = service
    app.api = api
    return app


# ------------------------------------------------------------------------------------ routes
def _routes(api: FastAPI, service: Service) -> None:
    limits = service.config.limits
    jobs = service.jobs

    @api.get("/v1/health", response_model=Health, tags=["service"], responses=_errors(403, 500))
    async def health():
        """Liveness (no token): the process answers."""
        return {"status": "ok", "version": __version__}

    @api.get("/v1/ready", response_model=Ready, tags=["service"], responses=_errors(*GUARDED, 503))
    async def ready():
        """Model loaded and worker alive; 503 `not_ready` while starting or when the model failed to load."""
        runner = service.runner
        is_ready = bool(getattr(runner, "ready", None) and runner.ready.is_set()) and jobs.worker_alive
        if not is_ready:
            why = "the model failed to load; see the server log" if jobs.prepare_error else "the model is loading"
            if jobs.prepared.is_set() and not jobs.worker_alive:
                why = "the worker has stopped"
            raise ApiError("not_ready", why, headers={"Retry-After": "1"})
        return {"ready": True, "version": __version__, "model": dict(getattr(runner, "model_info", {}) or {}),
                "queue": jobs.stats(), "render_objects": len(service.objects)}

    @api.post("/v1/avatars", status_code=202, tags=["avatars"], openapi_extra=UPLOAD_BODY,
              responses={202: {"model": JobView, "description": "the job (a replay of an Idempotency-Key "
                                                                 "answers the same job)"},
                         **_errors(400, *GUARDED, 409, 415, 429, 503)})
    async def create_avatar(request: Request,
                            idempotency_key: str | None = Header(None, alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY)):
        """Upload a portrait; the avatar is made by the job queue (poll `GET /v1/jobs/{job_id}`)."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError("unsupported_media_type", "send multipart/form-data with an `image` file field")
        try:
            form = await request.form(max_files=2, max_fields=2, max_part_size=limits.max_options_bytes)
        except StarletteHTTPException as exc:
            if "maximum size" in str(exc.detail):
                raise ApiError("payload_too_large", f"a multipart field is over the {limits.max_options_bytes}-byte "
                                                    f"limit") from None
            raise ApiError("bad_request", f"malformed multipart body: {exc.detail}") from None
        try:
            unknown = sorted(set(form.keys()) - {"image", "options"})
            if unknown:
                raise ApiError("bad_request", f"unknown multipart field(s) {', '.join(unknown)[:200]}; "
                                              f"send `image` and optionally `options`")
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise ApiError("bad_request", "the multipart field `image` (a file) is required")
            payload = await image.read(limits.max_image_bytes + 1)
            if len(payload) > limits.max_image_bytes:
                raise ApiError("payload_too_large", f"the image is over the {limits.max_image_bytes}-byte limit")
            raw_options = form.get("options")
            if isinstance(raw_options, UploadFile):
                raw_options = await raw_options.read(limits.max_options_bytes + 1)
                if len(raw_options) > limits.max_options_bytes:
                    raise ApiError("payload_too_large", f"`options` is over the {limits.max_options_bytes}-byte limit")
        finally:
            await form.close()
        options = _parse_options(raw_options)
        await run_in_threadpool(_check_image, payload)
        job, created = await run_in_threadpool(jobs.submit, payload, options, idempotency_key)
        headers = {"Location": f"/v1/jobs/{job['job_id']}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(job, status_code=202, headers=headers)

    @api.get("/v1/avatars", response_model=AvatarList, tags=["avatars"], responses=_errors(*GUARDED))
    async def list_avatars():
        """Finished avatars (complete, validated bundles only)."""
        return {"avatars": await run_in_threadpool(service.avatars.list)}

    @api.get("/v1/avatars/{avatar_id}/bundle", tags=["avatars"], response_class=Response,
             responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the bundle zip"}, **_errors(*GUARDED, 404)})
    async def get_bundle(avatar_id: str = Path(pattern=JOB_ID)):
        """The avatar bundle as a zip (avatar.ply, avatar.json, source/, preview.png)."""
        payload = await run_in_threadpool(service.avatars.bundle_bytes, avatar_id)
        if payload is None:
            raise ApiError("avatar_not_found", "no avatar with this id")
        return Response(payload, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{avatar_id}.zip"'})

    @api.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=_errors(*GUARDED, 404))
    async def get_job(job_id: str = Path(pattern=JOB_ID)):
        """A job's state (queued|running|succeeded|failed|cancelled), progress 0-1, stage, error, avatar_id."""
        return jobs.get(job_id)

    @api.delete("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"],
                responses={202: {"model": JobView, "description": "cancel requested; the job stops at its next check"},
                           **_errors(*GUARDED, 404, 409)})
    async def cancel_job(job_id: str = Path(pattern=JOB_ID)):
        """Cancel: a queued job at once (200), a running one at its next check (202)."""
        job, finished = await run_in_threadpool(jobs.cancel, job_id)
        return JSONResponse(job, status_code=200 if finished else 202)

    @api.put("/v1/objects/{object_id}", response_model=ObjectInfo, tags=["render"], openapi_extra=OBJECT_BODY,
             responses=_errors(400, *GUARDED, 415))
    async def put_object(request: Request, object_id: str = Path(pattern=OBJECT_ID)):
        """Register (or replace) an object's static attributes: the `PTOB` binary format, or an Inria PLY."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/octet-stream", "application/x-ply"):
            raise ApiError("unsupported_media_type", "send application/octet-stream (PTOB) or application/x-ply")
        body = await request.body()
        pl = payload_limits(limits)
        try:
            if ctype == "application/x-ply":
                attrs = await run_in_threadpool(object_from_ply, body, limits.max_gaussians_per_object)
            else:
                attrs = await run_in_threadpool(parse_object, body, pl)
        except PayloadError as exc:
            raise ApiError("bad_payload", str(exc)) from None
        return await run_in_threadpool(service.objects.put, object_id, attrs)

    @api.delete("/v1/objects/{object_id}", response_model=Deleted, tags=["render"], responses=_errors(*GUARDED, 404))
    async def delete_object(object_id: str = Path(pattern=OBJECT_ID)):
        if not service.objects.delete(object_id):
            raise ApiError("unknown_object", f"object {object_id!r} is not registered")
        return {"object_id": object_id, "deleted": True}

    @api.post("/v1/render", tags=["render"], response_class=Response, openapi_extra=BINARY_BODY,
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                           "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "PNG (RGBA8) or the raw PTIM float32 image"},
                         **_errors(400, *GUARDED, 404, 415, 503)})
    async def render(request: Request):
        """One frame: posed means and rotations of registered objects + camera (`PTRF` binary format)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/octet-stream":
            raise ApiError("unsupported_media_type", "send the PTRF frame as application/octet-stream")
        body = await request.body()
        t0 = time.perf_counter()
        try:
            frame = parse_render(body, payload_limits(limits))
        except PayloadError as exc:
            raise ApiError("bad_payload", str(exc)) from None
        t1 = time.perf_counter()
        payload, media_type, steps = await service.renderer.render(frame)
        # W3C Server-Timing: lets a client tell the backend's work from the transport (benchmarks/bench_bridge.py);
        # "render" is the whole wait for the render thread, "rasterize" and "output" its parts
        steps = {"parse": t1 - t0, "render": time.perf_counter() - t1, **steps}
        timing = ", ".join(f"{name};dur={1000 * seconds:.2f}" for name, seconds in steps.items())
        return Response(payload, media_type=media_type, headers={"Server-Timing": timing})


def _parse_options(raw) -> dict:
    if raw is None or raw == "" or raw == b"":
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("bad_options", "`options` must be a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError("bad_options", "`options` must be a JSON object")
    try:
        options = AvatarOptions.model_validate(value).model_dump(exclude_none=True)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()[:4]]
        raise ApiError("bad_options", "; ".join(parts)) from None
    from ..pipeline import CreateError, CreateOptions

    try:
        CreateOptions(**options).validate()
    except CreateError as exc:
        raise ApiError("bad_options", str(exc)) from None
    return options


_DECODES = threading.BoundedSemaphore(2)  # a burst of 50 MP uploads must not decode 40 at once


def _check_image(payload: bytes) -> None:
    """Decode once up front so a bad upload is a 400 now, not a failed job later."""
    from ..preprocess.decode import PortraitError, decode_image

    try:
        with _DECODES:
            decode_image(payload)
    except PortraitError as exc:
        raise ApiError("bad_image", str(exc).replace("<bytes>: ", "the image: ")) from None
    except MemoryError:
        raise ApiError("bad_image", "the image is too large to decode; downscale it") from None


def _document_security(api: FastAPI) -> None:
    """Bearer auth in the published schema (every operation but /v1/health)."""
    original = api.openapi

    def openapi():
        if api.openapi_schema:
            return api.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer", "description": "the token from the ready line"}
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                if path != "/v1/health":
                    op["security"] = [{"bearer": []}]
        api.openapi_schema = schema
        return schema

    api.openapi = openapi


__all__ = ["BodyTooLarge", "Service", "create_app"]
