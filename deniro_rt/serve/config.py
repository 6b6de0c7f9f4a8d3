"""ServeConfig: every knob of `python -m deniro_rt serve`, checked once at start; its command line."""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field, fields

from ..cli import config_parser
from ..errors import DeniroError
from ..providers import DEVICES, PRECISION_HELP, RUNTIME_PRECISIONS

log = logging.getLogger(__name__)
POSITIVE = (
    "max_batch_size",
    "max_queue",
    "max_texts_per_request",
    "max_body_bytes",
    "max_text_chars",
    "max_top_k",
    "max_masks_per_request",
    "max_answer_bytes",
    "retry_after_s",
    "max_header_bytes",
)
NOT_NEGATIVE = (
    "max_wait_ms",
    "graceful_timeout_s",
    "keep_alive_s",
    "header_timeout_s",
    "body_timeout_s",
    "write_timeout_s",
)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
CHOICES = {"device": DEVICES, "precision": RUNTIME_PRECISIONS, "log_level": LOG_LEVELS}


def opt(default, help: str):
    """A config field with its --help text (declared once, for the dataclass and its command line)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ServeConfig:
    model: str | None = opt(None, "export folder from `python -m export --onnx` (default: the shipped IMDB model)")
    device: str = opt("auto", "auto: CUDA when onnxruntime-gpu sees a GPU and starts on it, else CPU")
    precision: str | None = opt(None, PRECISION_HELP)
    host: str = opt("127.0.0.1", "address to listen on; keep 127.0.0.1 unless a proxy in front needs otherwise")
    port: int = opt(8000, "TCP port; 0: any free port (the log says which)")
    max_batch_size: int = opt(64, "most texts per model call; 1 turns batching off")
    # (at most half the batch's run time: the model idles at most a third of the time)
    max_wait_ms: float = opt(
        20.0,
        "right after a batch, most time to wait for its clients' next requests, at "
        "most half the batch's run time (a lone request never waits)",
    )
    max_queue: int = opt(1024, "most texts waiting for a batch; beyond it requests get 503 with Retry-After")
    max_texts_per_request: int = opt(64, 'most texts in one request\'s "inputs", at most --max-queue (413 beyond)')
    max_body_bytes: int = opt(1_048_576, "largest request body (413 beyond)")
    max_text_chars: int = opt(10_000, "longest text in characters (413 beyond)")
    max_top_k: int = opt(100, "largest top_k a request may ask for (422 beyond)")
    # The work and the answer grow with the masks, not the texts: "[MASK] " * 500 is a 3.5 KB text whose answer at
    # top_k 100 was 178 MB, and joint=true runs the model once per mask.
    max_masks_per_request: int = opt(256, "most [MASK]s in one request, all texts together (413 beyond)")
    max_answer_bytes: int = opt(
        16 * 1_048_576,
        "largest answer a request may ask for, estimated before any work as masks x top_k candidates, each "
        "repeating its filled text (413 beyond)",
    )
    max_header_bytes: int = opt(16_384, "largest request line and headers (431 beyond)")
    threads: int | None = opt(
        None,
        "the model's intra-op threads on CPU (ONNX Runtime's or OpenVINO's; default: one per usable core; "
        "fewer on a machine shared with other busy processes)",
    )
    keep_alive_s: float = opt(5.0, "an idle keep-alive connection is closed after this many seconds")
    header_timeout_s: float = opt(10.0, "a request's headers must arrive within this many seconds (408 beyond)")
    body_timeout_s: float = opt(
        10.0, "a request's body must arrive within this many seconds after its headers (408 beyond)"
    )
    write_timeout_s: float = opt(
        10.0, "a client that reads none of its answer for this many seconds is disconnected (its answer freed)"
    )
    graceful_timeout_s: float = opt(
        30.0, "after SIGTERM, how long requests in flight may still take; then they get 503 and the server exits"
    )
    retry_after_s: int = opt(1, "Retry-After seconds sent with a 503")
    log_level: str = opt("info", "uvicorn and deniro log level")

    def check(self) -> ServeConfig:
        """Raise DeniroError naming the bad value; clamp max_texts_per_request to max_queue."""
        for name in POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeniroError(f"{flag(name)} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise DeniroError(f"--port must be 0..65535 (0: any free port), got {self.port}")
        # nan passed `< 0` and the server started, then every GET /health failed on the config's nan in its JSON
        negative = [flag(name) for name in NOT_NEGATIVE if not 0 <= getattr(self, name) < math.inf]
        if negative:
            raise DeniroError(f"{', '.join(negative)} must be >= 0 and finite")
        if self.threads is not None and self.threads < 1:
            raise DeniroError(f"--threads must be a positive integer, got {self.threads}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed + ((None,) if name == "precision" else ()):
                raise DeniroError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for option, cap in self.texts_caps().items():
            if self.max_texts_per_request > cap:  # a request over it could never run: cap it, and say so
                log.warning("--max-texts-per-request %d lowered to %s %d", self.max_texts_per_request, option, cap)
                self.max_texts_per_request = cap
        return self

    def texts_caps(self) -> dict[str, int]:
        """The options that also bound one request's texts (check() lowers --max-texts-per-request to them): a
        request larger than the queue could never be admitted."""
        return {"--max-queue": self.max_queue}

    def texts_limit_flags(self) -> str:
        """The options behind max_texts_per_request, for the 413: once check() has lowered it to a cap, raising
        --max-texts-per-request alone changes nothing, so the operator must hear of both."""
        capping = [f"{option} {cap}" for option, cap in self.texts_caps().items() if cap <= self.max_texts_per_request]
        if not capping:
            return "--max-texts-per-request"
        raise_them = "both" if len(capping) == 1 else "them all"
        return f"--max-texts-per-request, capped by {' and '.join(capping)}: raise {raise_them} to allow more"


def model_threads(requested: int | None = None) -> int:
    """Intra-op threads for the model: the request, else one per usable core. The event loop's HTTP and JSON
    work is light next to the model's: on an idle 2-core VM, 2 threads instead of 1 gave the batched server 1.7x
    the sentences/s at 32 clients (bf16, 745 vs 436) and cut one client's p50 from 4.9 to 2.7 ms
    (docs/serving.md). On a machine busy with other work, fewer threads avoid waiting on preempted ones."""
    from ..providers import usable_cores

    return requested or usable_cores()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser_for(
    config_class: type,
    prog: str,
    description: str,
    help: dict[str, str] | None = None,
    choices: dict[str, tuple] | None = None,
) -> argparse.ArgumentParser:
    """cli.config_parser over ServeConfig or a subclass: each field's help text from its metadata (`help`
    overrides a field's), its type from its annotation (`int | None` -> int)."""
    declared = fields(config_class)
    texts = {f.name: (help or {}).get(f.name) or f.metadata["help"] for f in declared}
    types = {f.name: {"str": str, "int": int, "float": float}[f.type.split(" |")[0]] for f in declared}
    return config_parser(config_class(), prog, description, texts, types, {**CHOICES, **(choices or {})})
