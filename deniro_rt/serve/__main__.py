"""python -m deniro_rt serve: fill-mask over HTTP with dynamic batching (needs deniro[serve]).

  python -m deniro_rt serve                                  # shipped model, 127.0.0.1:8000
  python -m deniro_rt serve --model exports/deniro --device cuda --port 8080 --max-batch-size 128
  curl -s 127.0.0.1:8000/ -H 'content-type: application/json' \\
       -d '{"inputs": "This is a great [MASK]!", "parameters": {"top_k": 3}}'

Routes: POST / and /fill (Hugging Face Inference API fill-mask body), GET /health, /metrics
(Prometheus), /docs, /openapi.json. SIGTERM or Ctrl-C: stop accepting, answer what is in flight, exit 0.
"""

from __future__ import annotations

import logging
import sys

from ..cli import run_main, setup_logging
from .config import ServeConfig, parser_for


def parse_args(argv: list[str] | None) -> ServeConfig:
    parser = parser_for(ServeConfig, "python -m deniro_rt serve", __doc__)
    return ServeConfig(**vars(parser.parse_args(argv)))


def run(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(getattr(logging, config.log_level.upper()))
    # once the server module has loaded, Ctrl-C is a requested stop (exit 0); while uvicorn, fastapi and
    # onnxruntime import (seconds) it was a KeyboardInterrupt traceback
    return run_main(lambda: serve(config), interrupted="interrupted before the server started")


def serve(config: ServeConfig) -> int:
    from .server import main

    return main(config)


if __name__ == "__main__":
    sys.exit(run())
