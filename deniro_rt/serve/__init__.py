"""deniro_rt.serve: fill-mask over HTTP (FastAPI on uvicorn) with dynamic batching; Ray Serve in .ray.

    python -m deniro_rt serve --port 8000            # the shipped model on 127.0.0.1:8000
    curl -s localhost:8000 -H 'content-type: application/json' -d '{"inputs": "This is a great [MASK]!"}'

Needs the `serve` extra (`pip install "deniro[serve]"`); importing this package does not: FastAPI
and uvicorn are imported only by `create_app` and `main`.
"""
from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "main"]
SERVE_INSTALL_HINT = 'pip install "deniro[serve]"'


def create_app(config: ServeConfig, fill_mask=None):
    """The ASGI app (see deniro_rt.serve.app.create_app)."""
    from .app import create_app as build

    return build(config, fill_mask)


def main(config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT (see deniro_rt.serve.server.main)."""
    from .server import main as serve

    return serve(config)
