"""GuardedHttpTools: uvicorn's httptools protocol with the limits it lacks (uvicorn read a 300 MB
header whole, and waited forever on idle connections, slowloris and bodies shorter than their
Content-Length): headers capped (431); a request's headers due --header-timeout-s after the connection
opens or the last answer (plus the keep-alive time), its body --body-timeout-s after them (408);
JSON for malformed HTTP (400). Each refusal closes the connection."""

from __future__ import annotations

import json
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import ServeConfig


class GuardedHttpTools(HttpToolsProtocol):
    limits: ServeConfig  # set by a subclass per server (uvicorn instantiates the class per connection)
    _deadline = None
    _header_bytes: int | None = 0  # bytes of the request being read, until its headers are complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect(self.limits.header_timeout_s, "headers")

    def data_received(self, data: bytes) -> None:
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._header_bytes is not None and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request headers are over {self.limits.max_header_bytes} bytes (--max-header-bytes)")

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        self._expect(self.limits.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._expect(None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._header_bytes = 0  # the next request on this keep-alive connection
        self._expect(self.limits.keep_alive_s + self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc) -> None:
        self._expect(None)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"{msg} (malformed HTTP/1.1)")

    def _expect(self, seconds: float | None, what: str = "") -> None:
        """(Re)arm the one deadline of this connection; None disarms it."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None if seconds is None else self.loop.call_later(seconds, self._late, seconds, what)

    def _late(self, seconds: float, what: str) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:  # answering: close
            self.transport.close()
            return
        flag = "--header-timeout-s" if what == "headers" else "--body-timeout-s"
        self._refuse(408, f"the request's {what} did not arrive within {seconds:g} s ({flag})")

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message}).encode()
        head = f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        self.transport.write(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n{head}".encode() + body)
        self.transport.close()
