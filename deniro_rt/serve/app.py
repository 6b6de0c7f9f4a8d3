"""The ASGI app: POST / and /fill (Inference API fill-mask body), GET /health, /metrics, /docs,
/openapi.json. Starlette is imported here only (the `serve` extra)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import DeniroError
from .batcher import BatchLimits, DynamicBatcher, QueueFull, ShuttingDown
from .config import ServeConfig, model_threads
from .metrics import CONTENT_TYPE, ServeMetrics
from .openapi import docs_page, openapi_schema
from .request import BadRequest, parse_body, too_large

log = logging.getLogger(__name__)


def create_app(config: ServeConfig, fill_mask=None) -> Starlette:
    """The app. fill_mask: any object with `mask_token` and FillMask's `fill(texts, top_k=, targets=,
    joint=, truncation=, batch_size=)` (default: a deniro_rt.FillMask from config, loaded at startup)."""
    service = FillService(config.check(), fill_mask)
    routes = [Route("/", service.fill, methods=["POST"]), Route("/fill", service.fill, methods=["POST"]),
              Route("/health", service.health, methods=["GET"]),
              Route("/metrics", service.metrics_text, methods=["GET"]),
              Route("/openapi.json", service.openapi, methods=["GET"]),
              Route("/docs", service.docs, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=service.lifespan)
    app.state.service = service
    return app


def load_fill_mask(config: ServeConfig):
    from ..runtime import FillMask

    return FillMask(config.model, device=config.device, precision=config.precision,
                    threads=model_threads(config.threads))


class FillService:
    """The state behind the routes: one backend, one batcher, one set of metrics."""

    def __init__(self, config: ServeConfig, backend=None):
        self.config, self.backend = config, backend
        self.metrics = ServeMetrics()
        self.batcher: DynamicBatcher | None = None
        self._starting = asyncio.Lock()
        self.schema = openapi_schema(__version__)

    async def start(self) -> None:
        """Load the backend (unless given) and start the batcher, once. Run by the lifespan; also on
        the first request, for ASGI hosts that skip lifespan events."""
        async with self._starting:
            if self.batcher is not None:
                return
            if self.backend is None:
                self.backend = await asyncio.to_thread(load_fill_mask, self.config)
            limits = BatchLimits(self.config.max_batch_size, self.config.max_wait_ms, self.config.max_queue)
            batcher = DynamicBatcher(self.backend.fill, limits, self.metrics)
            batcher.start()
            self.batcher = batcher
            log.info("ready: %s", describe(self.backend))

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        await self.start()
        try:
            yield
        finally:  # uvicorn has already waited for in-flight requests; answer anything still queued
            await self.batcher.close()
            log.info("batcher drained; %s", dict(self.metrics.requests.values))

    async def fill(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._answer(request)
        self.metrics.requests.inc(str(response.status_code))
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _answer(self, request: Request) -> Response:
        try:
            if self.batcher is None:
                await self.start()
        except DeniroError as exc:  # a model that cannot load: say why on every request
            return error(503, f"the model could not be loaded: {exc}", self.config.retry_after_s)
        try:
            raw = await read_body(request, self.config.max_body_bytes)
            parsed = parse_body(raw, self.config, self.backend.mask_token)
            answer = await self.batcher.submit(parsed.texts, parsed.params, parsed.single) if parsed.texts else []
        except BadRequest as exc:
            return error(exc.status, str(exc))
        except DeniroError as exc:
            return error(422, str(exc))
        except (QueueFull, ShuttingDown) as exc:
            return error(503, str(exc), self.config.retry_after_s)
        except Exception as exc:  # a bug or a runtime failure: the client still gets an answer
            log.exception("fill failed")
            return error(500, f"internal error: {type(exc).__name__}: {exc}")
        self.metrics.texts.inc("filled", len(parsed.texts))
        return JSONResponse(answer)

    async def health(self, request: Request) -> Response:
        if self.batcher is None:  # lifespan skipped by the host and no request yet: not loaded
            return JSONResponse({"status": "not loaded; the first fill request loads the model"},
                                status_code=503)
        return JSONResponse({"status": "ok", **describe(self.backend), "queued_texts": self.batcher.queued_texts,
                             "threads": model_threads(self.config.threads),
                             "max_batch_size": self.config.max_batch_size, "max_wait_ms": self.config.max_wait_ms,
                             "max_queue": self.config.max_queue})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.schema)

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(docs_page(self.schema))


def describe(backend) -> dict:
    """What /health reports about the backend (a FillMask, or any adapter with these attributes)."""
    manifest = getattr(backend, "manifest", None)
    model = str(manifest.folder) if manifest is not None else getattr(backend, "model_name", type(backend).__name__)
    return {"model": model, "precision": getattr(backend, "precision", None),
            "provider": getattr(backend, "provider", None)}


def error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)
