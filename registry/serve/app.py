"""The ASGI application: the API and the pages over one :class:`~registry.api.Registry`.

Read-only: every route is a GET except ``POST /api/identify`` (which reads an
uploaded header and writes nothing). Each request is logged on
``safegene.serve`` with its actor: the token's owner, else ``anonymous``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..api import Registry
from ..catalog.db import POOL_SIZE, SERVE_THREADS
from ..errors import ConfigurationError, RegistryError
from . import api_routes, page_routes
from .config import ServeConfig
from .errors import UNAUTHORIZED, classify, error_body, message_for

log = logging.getLogger("safegene.serve")
TEMPLATES = Path(__file__).resolve().parent / "templates"
_HTTP_CODES = {404: 3, 405: 2, 400: 2, 413: 5, 422: 2}
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                     "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:"}  # fmt: skip


def create_app(reg: Registry, config: ServeConfig | None = None, *, threads: int = SERVE_THREADS) -> FastAPI:
    """The application serving ``reg`` (opened by the caller, who also closes it).

    ``threads``: route bodies this process runs at once (each holds a database connection while it
    runs; at most the catalog's pool size, so no request under load opens a connection of its own).
    """
    cfg = config or ServeConfig()
    if not 1 <= threads <= POOL_SIZE:
        raise ConfigurationError(f"threads must be 1 to {POOL_SIZE} (the connections a catalog keeps open)")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        log.info("process %d answers at most %d requests at once", os.getpid(), threads)
        yield

    app = FastAPI(title="SafeGene Registry", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Safety vectors, patched models and the audit chain, read-only.")  # fmt: skip
    app.state.registry, app.state.config = reg, cfg
    app.state.templates = Jinja2Templates(directory=str(TEMPLATES))
    app.state.templates.env.filters.update(short=_short, coefs=_coefs)
    app.include_router(api_routes.router)
    app.include_router(page_routes.router)

    app.add_middleware(_ActorAndLog, config=cfg)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        msgs = ["{}: {}".format(".".join(str(p) for p in err.get("loc", ())[1:]) or "request",
                                "contains characters that are not allowed here" if err.get("type") == "string_pattern_mismatch"
                                else err.get("msg", "")) for err in exc.errors()[:3]]  # fmt: skip
        return _error(request, 400, 2, "; ".join(msgs) + " (see /openapi.json)", cfg)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        text = "no such page or endpoint (see /openapi.json)" if exc.status_code == 404 else str(exc.detail)
        return _error(request, exc.status_code, _HTTP_CODES.get(exc.status_code, 2), text, cfg)

    async def registry_error(request: Request, exc: Exception) -> Response:
        status, code = classify(exc)
        if status >= 500:
            log.error("actor=%s %s %s failed", getattr(request.state, "actor", "?"), request.method,
                      request.url.path[:200], exc_info=exc)  # fmt: skip
        return _error(request, status, code, message_for(exc), cfg)

    # The library's own errors and those the CLI also reports in one line are answered inside
    # the middleware stack (logged with their actor); anything else is a bug: a 500, logged.
    for kind in (RegistryError, RecursionError, MemoryError, OSError, SQLAlchemyError, Exception):
        app.add_exception_handler(kind, registry_error)
    return app


class _ActorAndLog:
    """Pure ASGI middleware (no per-request task group): authenticates, adds headers, logs one line."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app, self.cfg = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        request = Request(scope)
        actor, refusal = _authenticate(request, self.cfg)
        scope.setdefault("state", {})["actor"] = actor
        status = [500]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                for k, v in _SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
            await send(message)

        try:
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            log.info("actor=%s %s %s %d %.1fms", actor, request.method, request.url.path[:200], status[0],
                     (time.perf_counter() - t0) * 1000)  # fmt: skip


def _short(value: object, n: int = 12) -> str:
    return str(value or "")[:n]


def _coefs(value: object) -> str:
    if not isinstance(value, dict) or not value:
        return "–"
    return ", ".join(f"{k}: {v:.3g}" if isinstance(v, int | float) else f"{k}: {v}" for k, v in value.items())


def _authenticate(request: Request, cfg: ServeConfig) -> tuple[str, Response | None]:
    header = request.headers.get("authorization")
    if header is None:
        if cfg.require_token and request.url.path != "/api/health":  # liveness probes carry no token
            return "anonymous", _unauthorized(request, cfg, "this server needs a bearer token (Authorization: Bearer TOKEN)")
        return "anonymous", None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "anonymous", _unauthorized(request, cfg, "use Authorization: Bearer TOKEN")
    for known, actor in cfg.tokens.items():
        if hmac.compare_digest(known.encode(), token.strip().encode()[:4096]):
            return actor, None
    return "anonymous", _unauthorized(request, cfg, "bearer token not recognised; ask the operator for one")


def _unauthorized(request: Request, cfg: ServeConfig, message: str) -> Response:
    resp = _error(request, 401, UNAUTHORIZED, message, cfg)
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _error(request: Request, status: int, code: int | str, message: str, cfg: ServeConfig) -> Response:
    body = error_body(code, message, expose_paths=cfg.expose_paths)
    if request.url.path.startswith("/api") or request.url.path.startswith("/openapi"):
        return JSONResponse(body, status_code=status)
    templates: Jinja2Templates = request.app.state.templates
    html = templates.get_template("error.html").render(status=status, error=body["error"], request=request)
    return HTMLResponse(html, status_code=status)


# How `safegene serve --workers N` hands each worker process what to open (it opens its own registry).
WORKER_ENV = "_SAFEGENE_SERVE_WORKER"


def run(reg: Registry, config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
        threads: int = SERVE_THREADS, opened_with: dict[str, str | None] | None = None) -> None:  # fmt: skip
    """Serve ``reg`` with uvicorn until interrupted (request lines on stderr, with their actor).

    ``workers`` > 1: that many processes share the port, each opening the registry again with
    ``opened_with`` (``Registry.open``'s home, db_url, store_url and store_endpoint); ``reg`` is closed.
    ``threads``: route bodies each process runs at once (see :func:`create_app`).
    """
    import uvicorn

    opts = {"host": host, "port": port, "access_log": False, "log_level": "info", "server_header": False}
    if workers <= 1:
        _log_to_stderr()
        uvicorn.run(create_app(reg, config, threads=threads), **opts)  # type: ignore[arg-type]
        return
    reg.close()
    os.environ[WORKER_ENV] = json.dumps({"open": opened_with or {}, "tokens": dict(config.tokens), "threads": threads,
                                         "require_token": config.require_token, "expose_paths": config.expose_paths})  # fmt: skip
    uvicorn.run("registry.serve.app:worker_app", factory=True, workers=workers, **opts)  # type: ignore[arg-type]


def worker_app() -> FastAPI:
    """One worker's application (uvicorn calls this in each process of ``serve --workers N``)."""
    spec = json.loads(os.environ[WORKER_ENV])
    _log_to_stderr()
    reg = Registry.open(**spec["open"], create=False)
    return create_app(reg, ServeConfig(tokens=spec["tokens"], require_token=spec["require_token"],
                                       expose_paths=spec["expose_paths"]), threads=spec["threads"])  # fmt: skip


def _log_to_stderr() -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
