"""GuardedHttpTools: uvicorn's httptools protocol with the limits it lacks (uvicorn read a 300 MB
header whole, and waited forever on idle connections, slowloris and bodies shorter than their
Content-Length): headers capped (431); a request's headers due --header-timeout-s after the connection
opens or the last answer (plus the keep-alive time), its body --body-timeout-s after them (408); a client
that stops reading its answer cut off after --write-timeout-s; JSON for malformed HTTP (400). Each refusal
closes the connection."""

from __future__ import annotations

import json
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import ServeConfig


class HeadersTooLarge(Exception):
    """Raised inside a parser callback to stop parsing; uvicorn then calls send_400_response."""


class GuardedHttpTools(HttpToolsProtocol):
    limits: ServeConfig  # set by a subclass per server (uvicorn instantiates the class per connection)
    _deadline = None
    _header_bytes: int | None = 0  # bytes received for the request being read, until its headers are complete
    _head_size = 0  # its request line and headers as parsed (one read may hold all of them, and a body)
    _phase = "idle"  # of the newest request on the connection: idle | headers | body | app (read, being answered)
    _refusal: tuple[int, str] | None = None  # why parsing was stopped

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect(self.limits.header_timeout_s, "headers")

    def data_received(self, data: bytes) -> None:
        if self._header_bytes is not None:  # a header still arriving is buffered by the parser: bound it
            self._header_bytes += len(data)
        super().data_received(data)
        if self._header_bytes is not None and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, self._too_large())

    def on_message_begin(self) -> None:
        self._header_bytes, self._head_size, self._phase = 0, 0, "headers"
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # "name: value\r\n"
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_bytes, self._phase = None, "body"
        self._expect(self.limits.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = "app"
        self._expect(None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_next()

    def pause_writing(self) -> None:
        """The client stopped reading its answer (the transport's buffer is full): it has --write-timeout-s."""
        super().pause_writing()
        self._expect(self.limits.write_timeout_s, "answer")

    def resume_writing(self) -> None:
        super().resume_writing()
        self._arm_next()

    def _arm_next(self) -> None:
        """After an answer was handed to the transport, or the client read what was buffered."""
        running = self.cycle is not None and not self.cycle.response_complete  # a pipelined request's answer
        if self.flow.write_paused:  # the answer is still unread: the write deadline stands
            self._expect(self.limits.write_timeout_s, "answer")
        elif self._phase == "headers":  # a pipelined request is arriving: its headers are due
            self._expect(self.limits.header_timeout_s, "headers")
        elif self._phase == "app":  # idle (wait for the next request), or a pipelined request being answered
            self._expect(None if running else self.limits.keep_alive_s + self.limits.header_timeout_s, "headers")
        # "body": a pipelined request's body is due, by the deadline armed when its headers arrived

    def connection_lost(self, exc) -> None:
        self._expect(None)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(*(self._refusal or (400, f"{msg} (malformed HTTP/1.1)")))

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_header_bytes:
            self._refusal = (431, self._too_large())
            raise HeadersTooLarge  # stops the parser: the request never reaches the app

    def _too_large(self) -> str:
        return f"request headers are over {self.limits.max_header_bytes} bytes (--max-header-bytes)"

    def _expect(self, seconds: float | None, what: str = "") -> None:
        """(Re)arm the one deadline of this connection; None disarms it."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None if seconds is None else self.loop.call_later(seconds, self._late, seconds, what)

    def _late(self, seconds: float, what: str) -> None:
        cycle = self.cycle
        if what == "answer" or (cycle is not None and cycle.response_started and not cycle.response_complete):
            self.transport.abort()  # mid-answer: no status can be sent; abort frees the unread answer at once
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
