"""The ASGI app on FastAPI: POST / and /fill (Inference API fill-mask body), GET /health, /metrics,
/docs (offline), /openapi.json (generated). Every answer that is not a 200 is `{"error": "..."}`.
FastAPI is imported here only (the `serve` extra)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import DeniroError, TextError
from ..runtime import FillMask, no_mask_message
from .batcher import ClientGone, DynamicBatcher, FillParams, Unavailable
from .config import ServeConfig, model_threads
from .schema import EXAMPLE, ErrorBody, FillAnswer, FillBody, Parameters, docs_page

log = logging.getLogger(__name__)
ERRORS = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (400, "body is not JSON"),
        (413, "too many texts, body too large or a text too long"),
        (415, "Content-Type is not application/json"),
        (422, "invalid body (the message names the field and the fix)"),
        (503, "queue full, shutting down or model not loaded; see the Retry-After header"),
    )
}
CLIENT_GONE = 499  # nginx's "client closed request": counted, never sent
# After uvicorn's graceful shutdown (whose requests were answered or, past --graceful-timeout-s, cancelled and
# dropped), the batcher gets this long to finish; a batch still running then is left behind (server.main exits).
CLOSE_GRACE_S = 1.0
OFF_LOOP_BYTES = 1_048_576  # answers estimated above this are rendered in a thread: /health stays responsive
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """The Prometheus metrics, one registry per app: several apps in one process (tests, Ray replicas)
    never mix their counts."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "deniro_requests", "HTTP fill requests answered, by status code", ["status"], registry=registry
        )
        self.texts = Counter(
            "deniro_texts",
            "texts queued, by outcome: filled, dropped, abandoned, failed",
            ["outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "deniro_batch_size",
            "texts per fill call of the dynamic batcher",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.queue_wait = Histogram(
            "deniro_queue_wait_seconds",
            "time a request waited before its batch started",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "deniro_request_latency_seconds",
            "fill request latency, body read to answer",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge("deniro_queue_texts", "texts waiting for a batch now", registry=registry)


def create_app(config: ServeConfig, fill_mask=None, batcher_class: type = DynamicBatcher) -> FastAPI:
    """The app. fill_mask: any object with `mask_token` and FillMask's `fill(texts, top_k=, targets=,
    joint=, truncation=, batch_size=)` (default: a deniro_rt.FillMask from config, loaded at startup).
    batcher_class: DynamicBatcher's constructor, enqueue, drop and close (Ray Serve: ray.ServeBatcher)."""
    service = FillService(config.check(), fill_mask, batcher_class)
    app = FastAPI(
        title="deniro fill-mask server",
        version=__version__,
        lifespan=service.lifespan,
        description="Hugging Face Inference API fill-mask body, with dynamic batching.",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # a 307 to a Location built from the client's Host header: a 404 instead
    )
    app.state.service = service
    for path in ("/", "/fill"):
        app.router.add_api_route(
            path,
            service.fill,
            methods=["POST"],
            response_model=FillAnswer,
            responses=ERRORS,
            summary="Fill [MASK]",
            route_class_override=FillRoute,
        )
    get = ["GET", "HEAD"]  # HEAD wherever GET works (RFC 9110)
    app.add_api_route("/health", service.health, methods=get, summary="200 once the model is loaded")
    app.add_api_route("/metrics", service.metrics_text, methods=get, summary="Prometheus metrics")
    app.add_api_route("/docs", service.docs, methods=get, summary="this page", response_class=HTMLResponse)
    for kind in (HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, error_response)
    return app


def load_fill_mask(config: ServeConfig) -> FillMask:
    return FillMask(
        config.model, device=config.device, precision=config.precision, threads=model_threads(config.threads)
    )


class FillRoute(APIRoute):
    """The fill routes: Content-Type must be JSON (415: a web page cannot make a browser POST
    text/plain to the model), the body is parsed here with clear 400s (FastAPI then finds it parsed),
    every outcome is counted and timed, and the client's disconnect ends the request quietly."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def fill(request: Request) -> Response:
            started = time.perf_counter()
            try:
                kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind != "application/json" and not kind.endswith("+json"):
                    raise HTTPException(
                        415,
                        f"Content-Type is {kind or 'missing'!r}; send the body as JSON "
                        f"with 'Content-Type: application/json'",
                    )
                request._body = await read_body(request, request.app.state.service.config.max_body_bytes)
                request._json = parse_json(request._body)
                response = await handler(request)
            except ClientDisconnect:
                response = Response(status_code=CLIENT_GONE)
            except asyncio.CancelledError:  # uvicorn's shutdown, past --graceful-timeout-s: a JSON 503, not its 500
                service = request.app.state.service
                message = "the server is shutting down (--graceful-timeout-s); retry on another instance"
                response = JSONResponse({"error": message}, 503, headers={**service.retry_after, "Connection": "close"})
            except Exception as exc:
                response = await error_response(request, exc)
            metrics = request.app.state.service.metrics
            metrics.requests.labels(str(response.status_code)).inc()
            metrics.latency.observe(time.perf_counter() - started)
            return response

        return fill


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    close = {"Connection": "close"}  # the rest of the body is never read: the connection cannot carry another request
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413, f"body is {int(declared)} bytes; this server takes at most {limit} (--max-body-bytes)", close
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(
                413, f"body is more than {limit} bytes; this server takes at most {limit} (--max-body-bytes)", close
            )
    return bytes(body)


def parse_json(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))  # strictly UTF-8: json.loads(bytes) would take UTF-16 and UTF-32 too
    except RecursionError:
        raise HTTPException(400, "body nests too deeply to parse; send a flat fill-mask body") from None
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not valid JSON ({exc}); send e.g. {json.dumps(EXAMPLE)}") from None
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not UTF-8; send JSON text in UTF-8") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise HTTPException(400, "body has a number with too many digits; top_k is a small integer") from None


class FillService:
    """The state behind the routes: one backend, one batcher, one set of metrics."""

    def __init__(self, config: ServeConfig, backend=None, batcher_class: type = DynamicBatcher):
        self.config, self.backend, self.batcher_class = config, backend, batcher_class
        self.metrics = ServeMetrics()
        self.retry_after = {"Retry-After": str(config.retry_after_s)}  # the headers of every 503
        self.batcher: DynamicBatcher | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Load the backend (unless given) and start the batcher, once. Run by the lifespan; also on
        the first request, for ASGI hosts that skip lifespan events."""
        async with self._starting:
            if self.batcher is not None:
                return
            if self.backend is None:
                self.backend = await asyncio.to_thread(load_fill_mask, self.config)
            self.batcher = self.batcher_class(self.backend.fill, self.config, self.metrics)
            log.info("ready: %s", describe(self.backend))

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        await self.start()
        try:
            yield
        finally:  # uvicorn has already waited for in-flight requests (--graceful-timeout-s): drain what is left
            await self.batcher.close(timeout=CLOSE_GRACE_S)
            log.info("batcher closed")

    async def fill(self, body: FillBody, request: Request) -> Response:
        if self.batcher is None:
            try:
                await self.start()
            except DeniroError as exc:  # a model that cannot load: say why on every request
                raise HTTPException(503, f"the model could not be loaded: {exc}", self.retry_after) from None
        texts, single = ([body.inputs], True) if isinstance(body.inputs, str) else (body.inputs, False)
        params = self.checked(texts, body.parameters)
        size = self.check_size(texts, params)  # the answer's estimated bytes, refused beyond the limit
        if not texts:
            return JSONResponse([])
        try:
            job = self.batcher.enqueue(texts, params, single)
        except Unavailable as exc:
            raise HTTPException(503, str(exc), self.retry_after) from None
        watcher = asyncio.ensure_future(drop_on_disconnect(request, self.batcher, job))
        try:
            answer = await job.future
        except ClientGone:  # the batcher counts its texts (dropped, or abandoned if its batch computed them)
            return Response(status_code=CLIENT_GONE)
        except asyncio.CancelledError:  # the graceful shutdown's time is up: its batch, if not started, never runs
            self.batcher.drop(job)
            raise
        except Exception as exc:  # its texts counted once, as failed: filled + dropped + abandoned + failed = queued
            self.metrics.texts.labels("failed").inc(len(texts))
            raise self.http_error(exc) from None
        finally:
            watcher.cancel()
        self.metrics.texts.labels("filled").inc(len(texts))
        if size > OFF_LOOP_BYTES:
            return await asyncio.to_thread(JSONResponse, answer)  # megabytes of JSON: not on the event loop
        return JSONResponse(answer)

    def http_error(self, exc: Exception) -> Exception:
        """What a job's failure is answered with; anything else is a bug (500, logged)."""
        if isinstance(exc, Unavailable):  # close() gave up on it (a host ended the lifespan with it in flight)
            return HTTPException(503, str(exc), self.retry_after)
        if isinstance(exc, TextError):  # a text too long in tokens: the fix in a request body's words
            exc = exc.naming('"parameters": {"truncation": true}')
        if isinstance(exc, DeniroError):  # what only the model sees (a text too long in tokens, a bad target)
            return HTTPException(422, str(exc))
        return exc

    def checked(self, texts: list[str], parameters: Parameters) -> FillParams:
        """The server's own limits, before anything is queued (a bad request never joins a batch)."""
        cfg = self.config
        if len(texts) > cfg.max_texts_per_request:
            raise HTTPException(
                413,
                f'"inputs" has {len(texts)} texts; this server takes at most '
                f"{cfg.max_texts_per_request} per request ({cfg.texts_limit_flags()}); "
                "split the list",
            )
        for index, text in enumerate(texts):
            if len(text) > cfg.max_text_chars:
                raise HTTPException(
                    413,
                    f"text {index} is {len(text)} characters; this server takes at most "
                    f"{cfg.max_text_chars} (--max-text-chars)",
                )
            if self.backend.mask_token not in text:
                raise HTTPException(422, no_mask_message(text, index, self.backend.mask_token))
        if parameters.top_k > cfg.max_top_k:
            raise HTTPException(
                422,
                f"parameters.top_k is {parameters.top_k}; this server returns at most {cfg.max_top_k} (--max-top-k)",
            )
        targets = parameters.targets
        params = FillParams(
            parameters.top_k,
            (targets,) if isinstance(targets, str) else targets and tuple(targets),
            parameters.joint,
            parameters.truncation,
        )
        return params

    def check_size(self, texts: list[str], params: FillParams) -> int:
        """The masks (the model's work: joint runs it once per mask) and the answer's estimated bytes (what
        the server holds until the client has read it), both refused (413) beyond their limits."""
        cfg, mask = self.config, self.backend.mask_token
        masks = [text.count(mask) for text in texts]
        if sum(masks) > cfg.max_masks_per_request:
            raise HTTPException(
                413,
                f"the texts hold {sum(masks)} {mask}s; this server fills at most {cfg.max_masks_per_request} per "
                "request (--max-masks-per-request); split the request",
            )
        size = answer_bytes(texts, masks, params)
        if size > cfg.max_answer_bytes:
            raise HTTPException(
                413,
                f"the answer would be about {size / 1e6:.1f} MB ({sum(masks)} masks x top_k {params.top_k}, each "
                f"candidate repeating its filled text); this server answers at most {cfg.max_answer_bytes / 1e6:.1f} "
                "MB (--max-answer-bytes): ask for a smaller top_k or fewer masks, or send shorter texts",
            )
        return size

    async def health(self) -> Response:
        if self.batcher is None:  # lifespan skipped by the host and no request yet: not loaded
            raise HTTPException(503, "not loaded; the first fill request loads the model", self.retry_after)
        cfg = self.config
        return JSONResponse(
            {
                "status": "ok",
                **describe(self.backend),
                "queued_texts": self.batcher.queued_texts,
                "threads": model_threads(cfg.threads),
                "max_batch_size": cfg.max_batch_size,
                "max_wait_ms": cfg.max_wait_ms,
                "max_queue": cfg.max_queue,
            }
        )

    async def metrics_text(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(docs_page(request.app.openapi()))


def answer_bytes(texts: list[str], masks: list[int], params: FillParams) -> int:
    """About the bytes of the JSON answer: per mask, one candidate per top_k (or target), each ~100 bytes plus
    its filled text; joint=true: one filled text per text."""
    if params.joint:
        return sum(len(text) + 60 * n for text, n in zip(texts, masks))
    candidates = min(len(params.targets), params.top_k) if params.targets else params.top_k
    return sum(n * candidates * (len(text) + 100) for text, n in zip(texts, masks))


async def drop_on_disconnect(request: Request, batcher, job) -> None:
    """Once the body is read, the next ASGI message is the client's disconnect: drop its job then."""
    with contextlib.suppress(Exception):
        for _ in range(3):  # bounded: a host that answers otherwise is not waited on in a loop
            if (await request.receive())["type"] == "http.disconnect":
                batcher.drop(job)
                return


def describe(backend) -> dict:
    """What /health reports about the backend (a FillMask, or any adapter with these attributes)."""
    manifest = getattr(backend, "manifest", None)
    model = str(manifest.folder) if manifest is not None else getattr(backend, "model_name", type(backend).__name__)
    return {
        "model": model,
        "precision": getattr(backend, "precision", None),
        "provider": getattr(backend, "provider", None),
    }


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """Every error as {"error": message}: ours, FastAPI's 422s naming the field, Starlette's 404/405."""
    if isinstance(exc, RequestValidationError):
        status, message, headers = 422, validation_message(exc.errors()), None
    elif isinstance(exc, HTTPException):
        routing = {
            404: f"no route {request.url.path}; the routes are listed at /docs",
            405: f"{request.method} is not allowed on {request.url.path} (allowed: {(exc.headers or {}).get('Allow')})",
        }  # Starlette's own, for a bad path or method
        status, message, headers = exc.status_code, routing.get(exc.status_code, str(exc.detail)), exc.headers
    else:  # a bug or a runtime failure: the client still gets an answer, the log the details
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        status, message, headers = 500, "internal error; the server log has the details", None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> str:
    """pydantic's errors as `field: problem`, e.g. 'parameters.top_k: Input should be greater than or
    equal to 1' (a union's member names, such as list[str], left out of the path)."""
    parts = []
    for error in errors[:4]:
        where = ".".join(str(p) for p in error["loc"][1:] if not (isinstance(p, str) and ("[" in p or p == "str")))
        problem = (
            str(error.get("ctx", {}).get("error", error["msg"])) if error["type"] == "value_error" else error["msg"]
        )
        parts.append(f"{where or 'body'}: {problem}")
    return "; ".join(dict.fromkeys(parts)) + f"; send e.g. {json.dumps(EXAMPLE)}"
