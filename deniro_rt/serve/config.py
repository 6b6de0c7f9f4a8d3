"""ServeConfig: every knob of `python -m deniro_rt serve`, checked once at start."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from ..errors import DeniroError

log = logging.getLogger(__name__)
POSITIVE = ("max_batch_size", "max_queue", "max_texts_per_request", "max_body_bytes", "max_text_chars",
            "max_top_k", "retry_after_s")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class ServeConfig:
    model: str | None = None  # export folder (python -m export --onnx); default: the shipped model
    device: str = "auto"  # auto | cpu | cuda
    precision: str | None = None  # fp32 | int8 | fp16; default: the runtime's choice for the device
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 64  # texts per fill call
    max_wait_ms: float = 2.0  # how long a batch's first text waits for more texts
    max_queue: int = 1024  # texts waiting for a batch; a request that would exceed it gets 503
    max_texts_per_request: int = 64
    max_body_bytes: int = 1_048_576
    max_text_chars: int = 10_000
    max_top_k: int = 100
    threads: int | None = None  # model intra-op threads; default: model_threads() (one core left to HTTP)
    graceful_timeout_s: float = 30.0  # after SIGTERM, how long in-flight requests may take
    retry_after_s: int = 1  # the Retry-After header of a 503
    log_level: str = "info"

    def check(self) -> "ServeConfig":
        """Raise DeniroError naming the bad value; clamp max_texts_per_request to max_queue."""
        for name in POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeniroError(f"{flag(name)} must be a positive integer, got {value!r}")
        if not 1 <= self.port <= 65535:
            raise DeniroError(f"--port must be 1..65535, got {self.port}")
        if self.max_wait_ms < 0 or self.graceful_timeout_s < 0:
            raise DeniroError("--max-wait-ms and --graceful-timeout-s must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise DeniroError(f"--threads must be a positive integer, got {self.threads}")
        if self.log_level not in LOG_LEVELS:
            raise DeniroError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.max_texts_per_request > self.max_queue:
            # A request larger than the queue could never be admitted: cap it, and say so.
            log.warning("--max-texts-per-request %d lowered to --max-queue %d", self.max_texts_per_request,
                        self.max_queue)
            self.max_texts_per_request = self.max_queue
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def model_threads(requested: int | None = None) -> int:
    """Intra-op threads for the model: the request, else one per usable core but one. The event loop
    (HTTP parsing, JSON) needs a core of its own while a batch runs; on a 2-core machine giving ONNX
    Runtime both cores made batches wait on each other's preempted threads."""
    from ..providers import usable_cores

    return requested or max(1, usable_cores() - 1)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")
