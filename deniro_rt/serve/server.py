"""main(config): load the model, then serve the app on uvicorn (httptools) until SIGTERM or SIGINT.

uvicorn's httptools protocol has no header size limit and no deadline for a request that arrives
slowly: protocol.GuardedHttpTools adds them.

Shutdown (uvicorn's graceful shutdown, checked against uvicorn 0.54's Server.shutdown): the listening
socket is closed first (no new connections), idle keep-alive connections are closed, requests in
flight run to completion (at most --graceful-timeout-s), then the app's lifespan ends, which drains
the batcher. uvicorn >= 0.29 then re-raises the signal it caught (so a default SIGTERM would end the
process with 143); the handler installed here turns that into a clean exit 0.
"""
from __future__ import annotations

import json
import logging
import signal
import socket

from ..errors import DeniroError
from . import SERVE_INSTALL_HINT
from .config import ServeConfig

log = logging.getLogger(__name__)


def require_serve_extra():
    try:
        import fastapi  # noqa: F401
        import httptools  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise DeniroError(f"the HTTP server needs the serve extra ({exc.name} is missing): "
                          f"{SERVE_INSTALL_HINT}") from None
    return uvicorn


def exit_cleanly(signum, frame) -> None:
    """SIGTERM outside uvicorn's own handling (while loading, or re-raised after the graceful
    shutdown): a requested stop, so exit 0."""
    raise SystemExit(0)


def main(config: ServeConfig, fill_mask=None) -> int:
    """Serve `fill_mask` (default: a FillMask built from config) on config.host:config.port."""
    uvicorn = require_serve_extra()
    from .app import create_app, load_fill_mask
    from .protocol import guarded_protocol

    config.check()
    signal.signal(signal.SIGTERM, exit_cleanly)
    log.info("serve config: %s", json.dumps(config.to_dict()))
    backend = fill_mask if fill_mask is not None else load_fill_mask(config)  # errors before binding
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        sock = socket.create_server((config.host, config.port), family=family, backlog=2048)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it: no Nagle delay
    except OSError as exc:
        raise DeniroError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); pass another "
                          f"--port (0: any free port)") from None
    log.warning("deniro serve listening on http://%s:%d", config.host, sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(
        create_app(config, backend), lifespan="on", log_level=config.log_level, access_log=False,
        http=guarded_protocol(config), timeout_keep_alive=config.keep_alive_s,
        timeout_graceful_shutdown=config.graceful_timeout_s))
    server.run(sockets=[sock])
    return 0 if server.started else 1
