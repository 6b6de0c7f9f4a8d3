"""Ray Serve deployment of the fill-mask HTTP app (extra `deniro[ray]`).

  python -m deniro_rt.ray_serve                                   # local Ray, 127.0.0.1:8000
  python -m deniro_rt.ray_serve --num-replicas 2 --num-cpus 1    # two replicas, one core each
  python -m deniro_rt.ray_serve --min-replicas 1 --max-replicas 8 --address auto   # autoscaling, on a cluster
  serve run deniro_rt.ray_serve:app_builder num_replicas=2        # Serve's own CLI (key=value args)
  curl -s 127.0.0.1:8000/ -d '{"inputs": "This is a great [MASK]!"}'

Each replica runs the same Starlette app as `python -m deniro_rt serve` (`@serve.ingress`; routes
POST / and /fill, GET /health, /metrics, /docs) with one FillMask whose ONNX Runtime intra-op
threads equal the CPUs the replica reserved (`--num-cpus`): Ray reserves CPUs but does not stop ORT
from starting one thread per core of the node, so N replicas with default sessions on one node
oversubscribe it. Batching inside a replica: `--batching app` (default) uses the app's own
DynamicBatcher (bounded queue, 503 when full); `--batching serve` uses Ray Serve's `@serve.batch`
instead. Measured on 2 cores (bench/results/cpu-2core-ray/): the app's batcher as fast or faster
(1.01-1.18x over three runs; the Serve HTTP proxy is the bottleneck) and about twice as large batches
(README "Scaling out on Ray").
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
from dataclasses import asdict, dataclass, fields

from .errors import DeniroError

log = logging.getLogger(__name__)
BATCHING = ("app", "serve")
INSTALL_HINT = 'pip install "deniro[ray]"'


@dataclass
class RayServeConfig:
    model: str | None = None  # export folder; None: the shipped model
    device: str = "cpu"  # per replica
    precision: str | None = None
    num_replicas: int = 1  # fixed replica count (ignored when max_replicas is set)
    min_replicas: int = 1  # autoscaling lower bound (with max_replicas)
    max_replicas: int | None = None  # set: autoscale between min and max replicas
    target_ongoing_requests: float = 32.0  # autoscaling target per replica (requests in flight)
    max_ongoing_requests: int = 256  # requests one replica takes at once (Serve's default, 5, starves batching)
    max_queued_requests: int = 1024  # requests waiting at each caller (proxy) beyond those; then 503
    num_cpus: float = 1.0  # Ray CPUs per replica = its ORT intra-op threads
    num_gpus: float = 0.0  # Ray GPUs per replica (device=cuda)
    batching: str = "app"  # app: the app's DynamicBatcher | serve: @serve.batch
    max_batch_size: int = 64  # texts per fill call
    max_wait_ms: float = 5.0  # how long a batch's first text waits for more
    max_queue: int = 1024  # texts waiting per replica (app batching); beyond: 503
    host: str = "127.0.0.1"  # Serve's HTTP proxy
    port: int = 8000
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS, else a local Ray
    name: str = "deniro"  # Serve application name

    def check(self) -> "RayServeConfig":
        if self.batching not in BATCHING:
            raise DeniroError(f"--batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.num_replicas < 1 or self.min_replicas < 0 or self.max_ongoing_requests < 1 or \
                self.max_queued_requests == 0 or self.max_queued_requests < -1:
            raise DeniroError("--num-replicas and --max-ongoing-requests must be >= 1, --min-replicas >= 0, "
                              "--max-queued-requests >= 1 or -1 (no limit)")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise DeniroError(f"--max-replicas ({self.max_replicas}) must be >= --min-replicas and >= 1")
        if self.num_cpus <= 0:
            raise DeniroError(f"--num-cpus must be positive, got {self.num_cpus}")
        self.serve_config()  # the app's own checks (batch size, queue, ...)
        return self

    def threads(self) -> int:
        """ORT intra-op threads of one replica: the CPUs it reserved, at least one."""
        return max(1, math.ceil(self.num_cpus))

    def serve_config(self):
        """The ServeConfig of the app inside each replica."""
        from .serve.config import ServeConfig

        # @serve.batch refuses an item larger than its max_batch_size with its own RuntimeError (a 500):
        # cap the texts of one request there, so such a request gets the app's clear 413 instead.
        per_request = (min(self.max_batch_size, ServeConfig.max_texts_per_request) if self.batching == "serve"
                       else ServeConfig.max_texts_per_request)
        return ServeConfig(model=self.model, device=self.device, precision=self.precision,
                           max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms,
                           max_queue=self.max_queue, threads=self.threads(),
                           max_texts_per_request=per_request).check()

    def deployment_options(self) -> dict:
        """serve.deployment(...) options: replicas (fixed or autoscaling) and per-replica resources."""
        actor = {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}
        options = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests,
                   "max_queued_requests": self.max_queued_requests,
                   "backpressure_config": {"retry_after_s": 1}}  # the 503 says when to retry
        if self.max_replicas is None:
            return {**options, "num_replicas": self.num_replicas}
        autoscaling = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                       "target_ongoing_requests": self.target_ongoing_requests}
        return {**options, "autoscaling_config": autoscaling}


# ---------------------------------------------------------------------- the replica
class FillMaskReplica:
    """One Serve replica: builds the app (and its FillMask) in the replica process."""

    def __init__(self, config: RayServeConfig):
        self.config = config

    def __serve_build_asgi_app__(self):
        from .serve.app import create_app, load_fill_mask

        serve_config = self.config.serve_config()
        serve_config.threads = replica_threads(self.config)
        backend = load_fill_mask(serve_config)
        app = create_app(serve_config, backend)
        if self.config.batching == "serve":
            use_serve_batch(app, self.config)
        log.info("replica ready: %d ORT threads, batching=%s", serve_config.threads, self.config.batching)
        return app


def replica_threads(config: RayServeConfig) -> int:
    """The CPUs Ray actually assigned to this replica (a cluster may round), else the config's."""
    try:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker (tests building the app directly)
        assigned = None
    return max(1, math.ceil(assigned)) if assigned else config.threads()


def use_serve_batch(app, config: RayServeConfig) -> None:
    """Replace the app's DynamicBatcher by a `@serve.batch` one once its lifespan has loaded the model
    (the app's routes call `service.batcher.submit(texts, params, single)`)."""
    service, original = app.state.service, app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(asgi_app):
        async with original(asgi_app):
            dynamic, service.batcher = service.batcher, ServeBatcher(service.backend, config, service.metrics)
            try:
                yield
            finally:  # the app's lifespan drains and closes its own (idle) batcher
                service.batcher = dynamic

    app.router.lifespan_context = lifespan


class ServeBatcher:
    """`submit` like DynamicBatcher, batched by Ray Serve's `@serve.batch` (texts counted per batch)."""

    def __init__(self, backend, config: RayServeConfig, metrics):
        from ray import serve

        self.backend, self.metrics, self.batch_size = backend, metrics, config.max_batch_size
        self.queued_texts = 0
        self._submit = serve.batch(max_batch_size=config.max_batch_size,
                                   batch_wait_timeout_s=config.max_wait_ms / 1000,
                                   batch_size_fn=lambda jobs: sum(len(texts) for texts, _ in jobs))(self._fill_many)

    async def submit(self, texts: list[str], params, single: bool = False):
        results = await self._submit((texts, params))
        if isinstance(results, Exception):
            raise results
        return results[0] if single else results

    async def _fill_many(self, jobs: list[tuple]) -> list:
        """One fill call per parameter group; a failing group is retried request by request."""
        answers: list = [None] * len(jobs)
        groups: dict = {}
        for index, (_, params) in enumerate(jobs):
            groups.setdefault(params, []).append(index)
        for params, members in groups.items():
            for index, answer in zip(members, await self._fill_group([jobs[i][0] for i in members], params)):
                answers[index] = answer
        return answers

    async def _fill_group(self, requests: list[list[str]], params) -> list:
        texts = [t for request in requests for t in request]  # [n_texts] of every request, in order
        self.metrics.batch_size.observe(len(texts))
        try:
            results = await asyncio.to_thread(self.backend.fill, texts, batch_size=self.batch_size, **params.kwargs())
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            return [answer for request in requests for answer in await self._fill_group([request], params)]
        answers, at = [], 0
        for request in requests:
            answers.append(results[at:at + len(request)])
            at += len(request)
        return answers


# ---------------------------------------------------------------------- building and running
def require_ray():
    try:
        import starlette  # noqa: F401
        from ray import serve
    except ImportError as exc:
        raise DeniroError(f"Ray Serve is not installed ({exc.name} is missing): {INSTALL_HINT}") from None
    return serve


def build_app(config: RayServeConfig):
    """The Serve application (a bound deployment) for serve.run / serve deploy."""
    serve = require_ray()
    config.check()
    ingress = serve.ingress()(FillMaskReplica)  # the app is built per replica (__serve_build_asgi_app__)
    deployment = serve.deployment(ingress, name="FillMask", **config.deployment_options())
    return deployment.bind(config)


def app_builder(args: dict):
    """`serve run deniro_rt.ray_serve:app_builder key=value ...`: args are RayServeConfig fields."""
    known = {f.name: f for f in fields(RayServeConfig)}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise DeniroError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return build_app(RayServeConfig(**{name: _convert(name, value) for name, value in args.items()}))


def _convert(name: str, value):
    """`serve run` passes strings: convert them to the field's type (as the CLI does)."""
    default = RayServeConfig.__dataclass_fields__[name].default
    kind = TYPES.get(name) or type(default)
    if not isinstance(value, str) or kind is str:
        return value
    try:
        return kind(value)
    except ValueError as exc:
        raise DeniroError(f"{name}={value!r} is not a valid {kind.__name__}") from exc


def connect(config: RayServeConfig) -> None:
    """Connect to the cluster (--address, else $RAY_ADDRESS, else a new local Ray)."""
    require_ray()
    import ray

    if not ray.is_initialized():
        ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)


def start(config: RayServeConfig) -> str:
    """Connect, start Serve's HTTP proxy on host:port, deploy and wait until ready; returns the URL."""
    serve = require_ray()
    application = build_app(config)  # bad options fail before anything starts
    connect(config)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(application, name=config.name, route_prefix="/")
    return f"http://{config.host}:{config.port}/"


def main(config: RayServeConfig) -> int:
    """Deploy, then wait for SIGTERM/SIGINT and tear the application down (exit 0)."""
    config.check()
    connect(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own handlers
        signal.signal(signum, lambda *_: stop.set())
    url = start(config)
    log.info("deniro on Ray Serve: %s (%s)", url, asdict(config))
    stop.wait()
    from ray import serve

    serve.delete(config.name)
    serve.shutdown()
    return 0


# ---------------------------------------------------------------------- command line
HELP = {
    "model": "export folder (default: the shipped IMDB model)",
    "device": "per replica: cpu, cuda or auto",
    "precision": "graph: fp32, int8 (CPU), fp16 (CUDA) (default: the runtime's choice)",
    "num_replicas": "fixed number of replicas (ignored with --max-replicas)",
    "min_replicas": "autoscaling: fewest replicas",
    "max_replicas": "autoscaling: most replicas (set it to turn autoscaling on)",
    "target_ongoing_requests": "autoscaling: requests in flight per replica it aims for",
    "max_ongoing_requests": "requests one replica takes at once (keep >= --max-batch-size)",
    "max_queued_requests": "requests waiting at Serve's proxy beyond those; more get 503 + Retry-After (-1: no limit)",
    "num_cpus": "Ray CPUs per replica; also its ONNX Runtime intra-op threads",
    "num_gpus": "Ray GPUs per replica (with --device cuda)",
    "batching": "app: the app's DynamicBatcher; serve: Ray Serve's @serve.batch",
    "max_batch_size": "most texts per model call",
    "max_wait_ms": "how long a batch's first text waits for more texts",
    "max_queue": "most texts waiting per replica (app batching); beyond: 503",
    "host": "Serve HTTP proxy address",
    "port": "Serve HTTP proxy port",
    "address": "Ray cluster address, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, else local)",
    "name": "Serve application name",
}
TYPES = {"model": str, "precision": str, "max_replicas": int, "address": str}


def parse_args(argv: list[str] | None) -> RayServeConfig:
    parser = argparse.ArgumentParser(prog="python -m deniro_rt.ray_serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(RayServeConfig):
        choices = {"batching": BATCHING, "device": ("auto", "cpu", "cuda")}.get(f.name)
        parser.add_argument("--" + f.name.replace("_", "-"), type=TYPES.get(f.name) or type(f.default),
                            default=f.default, choices=choices, help=HELP[f.name] + _default(f.name, f.default))
    return RayServeConfig(**vars(parser.parse_args(argv)))


def _default(name: str, value) -> str:
    return "" if "(default:" in HELP[name] else f" (default: {value})"


def run(argv: list[str] | None = None) -> int:
    from .cli import run_main, setup_logging

    setup_logging(logging.INFO, ours=(__name__,))
    config = parse_args(argv)
    return run_main(lambda: main(config))


if __name__ == "__main__":
    sys.exit(run())
