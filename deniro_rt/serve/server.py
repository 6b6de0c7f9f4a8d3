"""main(config): load the model, then serve the app on uvicorn (httptools) until SIGTERM or SIGINT.

uvicorn's httptools protocol has no header size limit and no deadline for a request that arrives
slowly: protocol.GuardedHttpTools adds them.

Shutdown (uvicorn's graceful shutdown, checked against uvicorn 0.54's Server.shutdown): the listening
socket is closed first (no new connections), idle keep-alive connections are closed, requests in
flight run to completion (at most --graceful-timeout-s), then the app's lifespan ends, which drains
the batcher. uvicorn >= 0.29 then re-raises the signal it caught (so a default SIGTERM would end the
process with 143, and Ctrl-C with a KeyboardInterrupt traceback); the handlers installed here turn that into
a clean exit 0.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import asdict

from ..errors import DeniroError
from .config import ServeConfig

log = logging.getLogger(__name__)


def main(config: ServeConfig, fill_mask=None) -> int:
    """Serve `fill_mask` (default: a FillMask built from config) on config.host:config.port."""
    try:
        import uvicorn

        from .app import create_app, load_fill_mask  # fastapi, pydantic, prometheus_client
        from .protocol import GuardedHttpTools  # httptools
    except ImportError as exc:
        raise DeniroError(
            f'the HTTP server needs the serve extra ({exc.name} is missing): pip install "deniro[serve]"'
        ) from None

    config.check()
    # SIGTERM or Ctrl-C outside uvicorn's own handling (while loading, or re-raised after the graceful shutdown):
    # a requested stop, so exit 0 (Ctrl-C was asyncio's KeyboardInterrupt traceback after the shutdown)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    log.info("serve config: %s", json.dumps(asdict(config)))
    backend = fill_mask if fill_mask is not None else load_fill_mask(config)  # errors before binding
    sock = listen(config)
    app = create_app(config, backend)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level=config.log_level,
            access_log=False,
            http=type("GuardedHttpTools", (GuardedHttpTools,), {"limits": config}),  # this server's limits
            ws="none",  # no WebSocket route: an Upgrade request is answered as plain HTTP
            timeout_keep_alive=config.keep_alive_s,
            timeout_graceful_shutdown=config.graceful_timeout_s,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:  # also on the SystemExit of the SIGTERM uvicorn re-raises
        leave_a_running_batch(app.state.service.batcher)
    return 0 if server.started else 1


def leave_a_running_batch(batcher) -> None:
    """A batch that outlived --graceful-timeout-s runs on in the worker thread: exit without it."""
    if batcher is not None and batcher.busy:
        log.warning("exiting with a batch still running (past --graceful-timeout-s)")
        logging.shutdown()
        os._exit(0)  # a requested stop; a plain exit would join the worker thread, i.e. wait for the batch


def listen_fix(exc: OSError) -> str:
    """What to change when binding failed: an unknown name or an address of no interface here is --host's fault
    (the message named --port, which could not help), a port in use or reserved is --port's."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return "pass another --host (an address of this machine, e.g. 127.0.0.1, or 0.0.0.0 for all)"
    return "pass another --port (0: any free port)"


def listen(config: ServeConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        sock = socket.create_server((config.host, config.port), family=family, backlog=2048)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it: no Nagle delay
    except OSError as exc:
        raise DeniroError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); {listen_fix(exc)}") from None
    log.warning("deniro serve listening on http://%s:%d", config.host, sock.getsockname()[1])
    return sock
