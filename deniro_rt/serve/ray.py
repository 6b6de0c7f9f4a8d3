"""Ray Serve deployment of the fill-mask HTTP app (extra `deniro[ray]`).

  python -m deniro_rt.serve.ray                                   # local Ray, 127.0.0.1:8000
  python -m deniro_rt.serve.ray --num-replicas 2 --num-cpus 1    # two replicas, one core each
  python -m deniro_rt.serve.ray --min-replicas 1 --max-replicas 8 --address auto   # autoscaling, on a cluster
  serve run deniro_rt.serve.ray:app_builder num_replicas=2        # Serve's own CLI (key=value args)
  curl -s 127.0.0.1:8000/ -H 'content-type: application/json' -d '{"inputs": "This is a great [MASK]!"}'

Each replica runs the same FastAPI app as `python -m deniro_rt serve` (`@serve.ingress`, the app built
in the replica; routes POST / and /fill, GET /health, /metrics, /docs) with one FillMask whose ONNX
Runtime intra-op threads equal the CPUs the replica reserved (`--num-cpus`): Ray reserves CPUs but
does not stop ORT from starting one thread per core of the node, so N replicas with default sessions
on one node oversubscribe it. RayServeConfig extends ServeConfig: every app option (limits, timeouts,
batching) means the same here. Batching inside a replica: `--batching app` (default) uses the app's
own DynamicBatcher (bounded queue, 503 when full); `--batching serve` uses Ray Serve's `@serve.batch`
instead (both run a batch through batcher.fill_jobs). Measured on 2 cores
(bench/results/cpu-2core-ray/): the app's batcher as fast or faster (1.01-1.18x over three runs; the
Serve HTTP proxy is the bottleneck) and about twice as large batches. A replica larger than every node,
or more starting replicas than the cluster's CPUs/GPUs hold, is refused before Serve starts (it would wait
forever).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
import threading
from dataclasses import asdict, dataclass, fields

from ..errors import DeniroError
from .batcher import ClientGone, DynamicBatcher, Job, fill_jobs, settle
from .config import ServeConfig, flag, opt, parser_for

log = logging.getLogger(__name__)
BATCHING = ("app", "serve")
SERVE_BATCH_WAIT_MS = 5.0  # @serve.batch's window (--batching serve): it is a fixed wait, unlike the app's


@dataclass
class RayServeConfig(ServeConfig):
    """ServeConfig (the app in each replica; host/port: Serve's HTTP proxy) plus the deployment's own."""

    num_replicas: int = opt(1, "fixed number of replicas (ignored with --max-replicas)")
    min_replicas: int = opt(1, "autoscaling: fewest replicas")
    max_replicas: int | None = opt(None, "autoscaling: most replicas (set it to turn autoscaling on)")
    target_ongoing_requests: float = opt(32.0, "autoscaling: requests in flight per replica it aims for")
    # Serve's default max_ongoing_requests, 5, starves batching
    max_ongoing_requests: int = opt(256, "requests one replica takes at once (keep >= --max-batch-size)")
    max_queued_requests: int = opt(
        1024, "requests waiting at Serve's proxy beyond those; more get 503 + Retry-After (-1: no limit)"
    )
    num_cpus: float = opt(1.0, "Ray CPUs per replica; also its ONNX Runtime intra-op threads")
    num_gpus: float = opt(0.0, "Ray GPUs per replica (with --device cuda)")
    batching: str = opt("app", "app: the app's DynamicBatcher; serve: Ray Serve's @serve.batch")
    address: str | None = opt(
        None, "Ray cluster address, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, else local)"
    )
    name: str = opt("deniro", "Serve application name")

    def check(self) -> RayServeConfig:
        if self.batching not in BATCHING:
            raise DeniroError(f"--batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if (
            self.num_replicas < 1
            or self.min_replicas < 0
            or self.max_ongoing_requests < 1
            or self.max_queued_requests == 0
            or self.max_queued_requests < -1
        ):
            raise DeniroError(
                "--num-replicas and --max-ongoing-requests must be >= 1, --min-replicas >= 0, "
                "--max-queued-requests >= 1 or -1 (no limit)"
            )
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise DeniroError(f"--max-replicas ({self.max_replicas}) must be >= --min-replicas and >= 1")
        if not 0 < self.num_cpus < math.inf:  # nan passed `<= 0`, then failed in math.ceil below
            raise DeniroError(f"--num-cpus must be a positive number, got {self.num_cpus}")
        if not 0 <= self.num_gpus < math.inf:  # a negative one was Ray's traceback from inside serve.run
            raise DeniroError(f"--num-gpus must be 0 or a positive number, got {self.num_gpus}")
        self.serve_config()  # the app's own checks (batch size, queue, ...)
        return self

    def replica_threads(self) -> int:
        """ORT intra-op threads of one replica: --threads, else the CPUs it reserved, at least one."""
        return self.threads or max(1, math.ceil(self.num_cpus))

    def serve_config(self) -> ServeConfig:
        """The ServeConfig of the app inside each replica."""
        config_class = ServeBatchConfig if self.batching == "serve" else ServeConfig
        config = config_class(**{f.name: getattr(self, f.name) for f in fields(ServeConfig)})
        config.threads = self.replica_threads()
        return config.check()

    def deployment_options(self) -> dict:
        """serve.deployment(...) options: replicas (fixed or autoscaling) and per-replica resources."""
        actor = {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}
        options = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": {"retry_after_s": self.retry_after_s},
        }  # the 503 says when to retry
        if self.max_replicas is None:
            return {**options, "num_replicas": self.num_replicas}
        autoscaling = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }
        return {**options, "autoscaling_config": autoscaling}


@dataclass
class ServeBatchConfig(ServeConfig):
    """The app's config under --batching serve: @serve.batch refuses an item over its max_batch_size with its own
    RuntimeError (a 500), so one request's texts are capped there too and get the app's clear 413 instead."""

    def texts_caps(self) -> dict[str, int]:
        return {**super().texts_caps(), "--max-batch-size": self.max_batch_size}


# ---------------------------------------------------------------------- the replica
class FillMaskReplica:
    """One Serve replica: builds the app (and its FillMask) in the replica process."""

    def __init__(self, config: RayServeConfig):
        self.config = config

    def __serve_build_asgi_app__(self):
        from .app import create_app, load_fill_mask

        serve_config = self.config.serve_config()
        serve_config.threads = replica_threads(self.config)
        batcher_class = ServeBatcher if self.config.batching == "serve" else DynamicBatcher
        app = create_app(serve_config, load_fill_mask(serve_config), batcher_class)
        log.info("replica ready: %d ORT threads, batching=%s", serve_config.threads, self.config.batching)
        return app


def replica_threads(config: RayServeConfig) -> int:
    """The CPUs Ray actually assigned to this replica (a cluster may round), else the config's."""
    try:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker (tests building the app directly)
        assigned = None
    return max(1, math.ceil(assigned)) if assigned and not config.threads else config.replica_threads()


class ServeBatcher:
    """DynamicBatcher's interface (the app's routes call `enqueue(texts, params, single)` and `drop(job)`),
    batched by Ray Serve's `@serve.batch` (texts counted)."""

    def __init__(self, fill, config: ServeConfig, metrics):
        from ray import serve

        self.fill, self.metrics, self.batch_size = fill, metrics, config.max_batch_size
        self.queued_texts = 0
        self._running: set[asyncio.Task] = set()
        wait_ms = min(config.max_wait_ms, SERVE_BATCH_WAIT_MS)  # Serve waits this long even for a lone request
        self._submit = serve.batch(
            max_batch_size=config.max_batch_size,
            batch_wait_timeout_s=wait_ms / 1000,
            batch_size_fn=lambda jobs: sum(len(job.texts) for job in jobs),
        )(self._fill_many)

    async def close(self, timeout: float | None = None) -> None:
        await asyncio.wait(
            [asyncio.ensure_future(asyncio.gather(*self._running, return_exceptions=True))], timeout=timeout
        )

    busy = False  # Ray Serve's replica outlives the app's lifespan: nothing to exit without

    def enqueue(self, texts: list[str], params, single: bool = False) -> Job:
        job = Job(texts, params, single, asyncio.get_running_loop().create_future())
        task = asyncio.ensure_future(self._answer(job))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return job

    async def _answer(self, job: Job) -> None:
        try:
            settle(job, await self._submit(job))
        except Exception as exc:  # Serve's own batching failed
            settle(job, exc)

    def drop(self, job: Job) -> None:
        job.dropped = True  # fill_jobs skips it if its batch has not run yet
        self.metrics.texts.labels("dropped").inc(len(job.texts))
        settle(job, ClientGone())

    async def _fill_many(self, jobs: list[Job]) -> list:
        return await asyncio.to_thread(fill_jobs, self.fill, jobs, self.batch_size, self.metrics.batch_size.observe)


# ---------------------------------------------------------------------- building and running
def require_ray():
    try:
        import fastapi  # noqa: F401
        from ray import serve
    except ImportError as exc:
        raise DeniroError(f'Ray Serve is not installed ({exc.name} is missing): pip install "deniro[ray]"') from None
    return serve


def build_app(config: RayServeConfig):
    """The Serve application (a bound deployment) for serve.run / serve deploy."""
    serve = require_ray()
    config.check()
    ingress = serve.ingress()(FillMaskReplica)  # the app is built per replica (__serve_build_asgi_app__)
    deployment = serve.deployment(ingress, name="FillMask", **config.deployment_options())
    return deployment.bind(config)


def app_builder(args: dict):
    """`serve run deniro_rt.serve.ray:app_builder key=value ...`: the command line's options, read by its
    parser (same types and choices)."""
    parser = command_line()
    parser.exit_on_error = False
    try:
        known, unknown = parser.parse_known_args([f"{flag(name)}={value}" for name, value in args.items()])
    except argparse.ArgumentError as exc:
        raise DeniroError(str(exc)) from None
    if unknown:
        raise DeniroError(f"unknown argument(s) {', '.join(unknown)}; see python -m deniro_rt.serve.ray --help")
    return build_app(RayServeConfig(**vars(known)))


def connect(config: RayServeConfig) -> None:
    """Connect to the cluster (--address, else $RAY_ADDRESS, else a new local Ray)."""
    require_ray()
    import ray

    if not ray.is_initialized():
        ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)


def check_cluster_fits(config: RayServeConfig) -> None:
    """serve.run waits forever for replicas the cluster cannot place (Ray only logs that no node fits them):
    refuse a replica larger than every node, or more starting replicas than the cluster's CPUs/GPUs hold."""
    import ray

    from ..batch.ray import check_node_fits

    check_node_fits(config.num_cpus, config.num_gpus, "--num-cpus", "--num-gpus")
    replicas = config.num_replicas if config.max_replicas is None else max(1, config.min_replicas)
    total = ray.cluster_resources()
    for option, resource, each in (("--num-cpus", "CPU", config.num_cpus), ("--num-gpus", "GPU", config.num_gpus)):
        if replicas * each > total.get(resource, 0.0):
            raise DeniroError(
                f"{replicas} replicas of {option} {each:g} need {replicas * each:g} {resource}s, the Ray cluster "
                f"has {total.get(resource, 0.0):g}, so Serve would wait forever; pass fewer replicas "
                f"(--num-replicas, or --min-replicas with --max-replicas) or a smaller {option}"
            )


def start(config: RayServeConfig) -> str:
    """Connect, start Serve's HTTP proxy on host:port, deploy and wait until ready; returns the URL."""
    serve = require_ray()
    application = build_app(config)  # bad options fail before anything starts
    connect(config)
    check_cluster_fits(config)
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
    serve = require_ray()
    serve.delete(config.name)
    serve.shutdown()
    return 0


# ---------------------------------------------------------------------- command line
HELP = {
    "threads": "ONNX Runtime intra-op threads per replica (default: --num-cpus)",
    "host": "Serve HTTP proxy address",
    "port": "Serve HTTP proxy port",
    "max_texts_per_request": 'most texts in one request\'s "inputs", at most --max-queue, and at most '
    "--max-batch-size with --batching serve (413 beyond)",
}  # what they mean here


def command_line() -> argparse.ArgumentParser:
    return parser_for(RayServeConfig, "python -m deniro_rt.serve.ray", __doc__, HELP, {"batching": BATCHING})


def parse_args(argv: list[str] | None) -> RayServeConfig:
    return RayServeConfig(**vars(command_line().parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    from ..cli import run_main, setup_logging

    setup_logging(logging.INFO, ours=(__name__,))
    config = parse_args(argv)
    # once deployed, Ctrl-C tears the application down (exit 0); while Ray imports and starts (seconds) it was a
    # KeyboardInterrupt traceback
    return run_main(lambda: main(config), interrupted="interrupted before the deployment started")


if __name__ == "__main__":
    sys.exit(run())
