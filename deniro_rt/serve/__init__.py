"""deniro_rt.serve: fill-mask over HTTP (FastAPI on uvicorn) with dynamic batching; Ray Serve in .ray.

    python -m deniro_rt serve --port 8000            # the shipped model on 127.0.0.1:8000
    curl -s localhost:8000 -H 'content-type: application/json' -d '{"inputs": "This is a great [MASK]!"}'

Needs the `serve` extra (`pip install "deniro[serve]"`); importing this package does not: FastAPI
and uvicorn are imported only by `create_app` and `main`.
"""

from __future__ import annotations

import importlib

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "main"]


def __getattr__(name: str):
    """create_app (see .app) and main (see .server), imported on first use: they need the serve extra."""
    if name not in ("create_app", "main"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(".app" if name == "create_app" else ".server", __name__), name)
