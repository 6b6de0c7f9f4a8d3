"""ServeConfig: every knob of `python -m deniro_rt serve`, checked once at start; its command line."""
from __future__ import annotations

import argparse
import logging
from dataclasses import MISSING, asdict, dataclass, fields

from ..errors import DeniroError
from ..providers import DEVICES, PRECISIONS

log = logging.getLogger(__name__)
POSITIVE = ("max_batch_size", "max_queue", "max_texts_per_request", "max_body_bytes", "max_text_chars",
            "max_top_k", "retry_after_s", "max_header_bytes")
NOT_NEGATIVE = ("max_wait_ms", "graceful_timeout_s", "keep_alive_s", "header_timeout_s", "body_timeout_s")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
CHOICES = {"device": DEVICES, "precision": PRECISIONS, "log_level": LOG_LEVELS}


@dataclass
class ServeConfig:
    model: str | None = None  # export folder (python -m export --onnx); default: the shipped model
    device: str = "auto"  # one of providers.DEVICES
    precision: str | None = None  # one of providers.PRECISIONS; default: the runtime's choice for the device
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the log names it)
    max_batch_size: int = 64  # texts per fill call
    max_wait_ms: float = 20.0  # after a batch, most time waited for its clients' next requests (and at
    # most half the batch's run time: the model idles at most a third of the time)
    max_queue: int = 1024  # texts waiting for a batch; a request that would exceed it gets 503
    max_texts_per_request: int = 64
    max_body_bytes: int = 1_048_576
    max_text_chars: int = 10_000
    max_top_k: int = 100
    max_header_bytes: int = 16_384  # request line and headers; 431 beyond
    threads: int | None = None  # model intra-op threads; default: model_threads() (one core left to HTTP)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slow clients: 408)
    body_timeout_s: float = 10.0  # its body within this after the headers (408)
    graceful_timeout_s: float = 30.0  # after SIGTERM, how long in-flight requests may take
    retry_after_s: int = 1  # the Retry-After header of a 503
    log_level: str = "info"

    def check(self) -> "ServeConfig":
        """Raise DeniroError naming the bad value; clamp max_texts_per_request to max_queue."""
        for name in POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeniroError(f"{flag(name)} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise DeniroError(f"--port must be 0..65535 (0: any free port), got {self.port}")
        negative = [flag(name) for name in NOT_NEGATIVE if getattr(self, name) < 0]
        if negative:
            raise DeniroError(f"{', '.join(negative)} must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise DeniroError(f"--threads must be a positive integer, got {self.threads}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed + ((None,) if name == "precision" else ()):
                raise DeniroError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
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


def parser_for(config_class: type, prog: str, description: str, help: dict[str, str],
               types: dict[str, type], choices: dict[str, tuple] | None = None) -> argparse.ArgumentParser:
    """One --flag per dataclass field (ServeConfig or a subclass), typed by its default or `types`."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(config_class):
        default = None if f.default is MISSING else f.default
        note = "" if "(default:" in help[f.name] else f" (default: {default})"
        parser.add_argument(flag(f.name), type=types.get(f.name) or type(default), default=default,
                            choices={**CHOICES, **(choices or {})}.get(f.name), help=help[f.name] + note)
    return parser
