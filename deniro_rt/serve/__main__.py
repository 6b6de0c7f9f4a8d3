"""python -m deniro_rt serve: fill-mask over HTTP with dynamic batching (needs deniro[serve]).

  python -m deniro_rt serve                                  # shipped model, 127.0.0.1:8000
  python -m deniro_rt serve --model exports/deniro --device cuda --port 8080 --max-batch-size 128
  curl -s 127.0.0.1:8000/ -d '{"inputs": "This is a great [MASK]!", "parameters": {"top_k": 3}}'

Routes: POST / and /fill (Hugging Face Inference API fill-mask body), GET /health, /metrics
(Prometheus), /docs, /openapi.json. SIGTERM: stop accepting, answer what is in flight, exit 0.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from ..cli import run_main, setup_logging
from ..providers import DEVICES, RUNS_ON
from .config import LOG_LEVELS, ServeConfig

HELP = {
    "model": "export folder from `python -m export --onnx` (default: the shipped IMDB model)",
    "device": "auto: CUDA when onnxruntime-gpu sees a GPU, else CPU",
    "precision": "graph to run: fp32, int8 (CPU) or fp16 (CUDA) (default: the runtime's choice for the device)",
    "host": "address to listen on; keep 127.0.0.1 unless a proxy in front needs otherwise",
    "port": "TCP port",
    "max_batch_size": "most texts per model call; 1 turns batching off",
    "max_wait_ms": "how long a batch's first text waits for more texts",
    "max_queue": "most texts waiting for a batch; beyond it requests get 503 with Retry-After",
    "max_texts_per_request": "most texts in one request's \"inputs\" (413 beyond)",
    "max_body_bytes": "largest request body (413 beyond)",
    "max_text_chars": "longest text in characters (413 beyond)",
    "max_top_k": "largest top_k a request may ask for (422 beyond)",
    "threads": "ONNX Runtime intra-op threads on CPU (default: one per usable core but one, which the "
               "HTTP event loop needs while a batch runs; at least 1)",
    "graceful_timeout_s": "after SIGTERM, how long requests in flight may still take",
    "retry_after_s": "Retry-After seconds sent with a 503",
    "log_level": "uvicorn and deniro log level",
}
CHOICES = {"device": DEVICES, "precision": tuple(RUNS_ON), "log_level": LOG_LEVELS}
TYPES = {"model": str, "precision": str, "threads": int}


def parse_args(argv: list[str] | None) -> ServeConfig:
    parser = argparse.ArgumentParser(prog="python -m deniro_rt serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(ServeConfig):
        default = f.default
        kind = TYPES.get(f.name) or type(default)
        note = "" if "(default:" in HELP[f.name] else f" (default: {default})"
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                            choices=CHOICES.get(f.name), help=HELP[f.name] + note)
    return ServeConfig(**vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(getattr(logging, config.log_level.upper()))
    from .server import main

    return run_main(lambda: main(config))


if __name__ == "__main__":
    import sys

    sys.exit(run())
