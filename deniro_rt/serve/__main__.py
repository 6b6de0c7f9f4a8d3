"""python -m deniro_rt serve: fill-mask over HTTP with dynamic batching (needs deniro[serve]).

  python -m deniro_rt serve                                  # shipped model, 127.0.0.1:8000
  python -m deniro_rt serve --model exports/deniro --device cuda --port 8080 --max-batch-size 128
  curl -s 127.0.0.1:8000/ -H 'content-type: application/json' \\
       -d '{"inputs": "This is a great [MASK]!", "parameters": {"top_k": 3}}'

Routes: POST / and /fill (Hugging Face Inference API fill-mask body), GET /health, /metrics
(Prometheus), /docs, /openapi.json. SIGTERM: stop accepting, answer what is in flight, exit 0.
"""
from __future__ import annotations

import logging

from ..cli import run_main, setup_logging
from .config import ServeConfig, parser_for

HELP = {
    "model": "export folder from `python -m export --onnx` (default: the shipped IMDB model)",
    "device": "auto: CUDA when onnxruntime-gpu sees a GPU, else CPU",
    "precision": "graph to run: fp32, int8 (CPU) or fp16 (CUDA) (default: the runtime's choice for the device)",
    "host": "address to listen on; keep 127.0.0.1 unless a proxy in front needs otherwise",
    "port": "TCP port; 0: any free port (the log says which)",
    "max_batch_size": "most texts per model call; 1 turns batching off",
    "max_wait_ms": "right after a batch, most time to wait for its clients' next requests, at most half "
                   "the batch's run time (a lone request never waits)",
    "max_queue": "most texts waiting for a batch; beyond it requests get 503 with Retry-After",
    "max_texts_per_request": "most texts in one request's \"inputs\" (413 beyond)",
    "max_body_bytes": "largest request body (413 beyond)",
    "max_text_chars": "longest text in characters (413 beyond)",
    "max_top_k": "largest top_k a request may ask for (422 beyond)",
    "max_header_bytes": "largest request line and headers (431 beyond)",
    "threads": "ONNX Runtime intra-op threads on CPU (default: one per usable core but one, which the "
               "HTTP event loop needs while a batch runs; at least 1)",
    "keep_alive_s": "an idle keep-alive connection is closed after this many seconds",
    "header_timeout_s": "a request's headers must arrive within this many seconds (408 beyond)",
    "body_timeout_s": "a request's body must arrive within this many seconds after its headers (408 beyond)",
    "graceful_timeout_s": "after SIGTERM, how long requests in flight may still take",
    "retry_after_s": "Retry-After seconds sent with a 503",
    "log_level": "uvicorn and deniro log level",
}
TYPES = {"model": str, "precision": str, "threads": int}


def parse_args(argv: list[str] | None) -> ServeConfig:
    parser = parser_for(ServeConfig, "python -m deniro_rt serve", __doc__, HELP, TYPES)
    return ServeConfig(**vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(getattr(logging, config.log_level.upper()))
    from .server import main

    return run_main(lambda: main(config))


if __name__ == "__main__":
    import sys

    sys.exit(run())
