"""Connection-level limits: uvicorn's httptools protocol with a header cap, header and body timeouts and a
connection limit (none of which httptools or uvicorn offers).

``GuardedHttpProtocol`` is what ``dede serve`` runs (with or without ``--reuse-port``). It enforces, per process,
the ``Settings`` (environment variables ``DEDE_...``), read once per process:

- ``max_header_bytes`` (64 KiB): the request line and headers together. The bytes received from the start of
  a request are counted after each read while its headers are incomplete (so at most one read, 256 KiB, past
  the cap is ever parsed or held), and the parsed size is checked when they complete (so a request that came
  in one read is held to the same cap). Beyond it the answer is ``431 Request Header Fields Too Large`` and the
  connection closes. Each request of a keep-alive or pipelined connection has its own count.
- ``header_timeout_s`` (10 s): from the connection (or from the end of the previous response) until the
  request's headers are complete. On expiry a connection that has sent part of a request gets
  ``408 Request Timeout``; one that has sent nothing is closed without an answer. uvicorn's own keep-alive
  timeout (``timeout_keep_alive``, 5 s, reset by any byte) still closes idle keep-alive connections first.
- ``body_timeout_s`` (30 s): from the end of the headers until the whole body has arrived. On expiry the
  application sees ``http.disconnect`` (Starlette raises ``ClientDisconnect``), the client gets ``408`` unless a
  response has started, and the connection closes. When it expires while the server itself is not reading
  (flow control: the application has not taken the body yet, or a pipelined request waits), it starts over.
- ``max_connections`` (256): open connections per process (uvicorn's own count, WebSockets included),
  lowered to the open-file limit (``ulimit -n``) less ``RESERVED_FDS`` when that is smaller; one beyond it is
  answered ``503 Service Unavailable`` with ``Retry-After: 1`` at once, without reading a request, and closed
  (a client that had already sent its request may see a reset instead of the 503).

These answers are plain bytes written to the transport, like uvicorn's own 400 for an unparseable request, with
``connection: close``. After a 431 or 408 the server stops sending (FIN) and discards what the client still
sends for up to ``LINGER_S`` seconds / ``LINGER_BYTES`` bytes before closing, so that a client still sending
reads the answer instead of a connection reset.

Running uvicorn directly gets these limits only with the protocol named::

    uvicorn service.app:create_app --factory --http service.protocol:GuardedHttpProtocol

(uvicorn's ``Config.load`` imports ``--http`` from that string when it is not one of its own names); plain
``--http httptools`` / ``auto`` has none of them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.settings import Settings, get_settings

log = logging.getLogger("dede.service.protocol")

LINGER_S = 2.0
LINGER_BYTES = 8 * 1024 * 1024
RESERVED_FDS = 64  # file descriptors kept for everything but client connections (model, metrics, logs, loop)
_LOG_EVERY_S = 10.0


def connection_limit(max_connections: int, open_files: int | None = None) -> int:
    """``max_connections``, lowered to fit the process's open-file limit (``RLIMIT_NOFILE``, less
    ``RESERVED_FDS``): beyond that, accepting fails and new connections wait in the backlog, valid ones too."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, open_files - RESERVED_FDS))


class _HeadersTooLarge(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with ``Settings.max_header_bytes``, ``header_timeout_s``, ``body_timeout_s`` and
    ``max_connections`` (see the module docstring)."""

    settings: ClassVar[Settings | None] = None  # read on the first connection; assign to override
    _max_connections: ClassVar[int] = 0
    _last_log: ClassVar[dict[str, float]] = {}
    _suppressed: ClassVar[dict[str, int]] = {}

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        cls = type(self)
        if cls.settings is None:
            cls.settings = get_settings()
        s = cls.settings
        if cls._max_connections == 0:
            cls._max_connections = connection_limit(s.max_connections)
            if cls._max_connections < s.max_connections:
                log.warning("max_connections=%d lowered to %d to fit the open-file limit (ulimit -n %d)",
                            s.max_connections, cls._max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.max_header_bytes = s.max_header_bytes
        self.header_timeout_s = s.header_timeout_s
        self.body_timeout_s = s.body_timeout_s
        self.max_connections = cls._max_connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False  # beyond max_connections: answered 503 at once
        self._finishing = False  # answered 431 / 408: discarding input until closed
        self._linger_left = 0
        # per request: between the end of the previous message (or the connection) and the end of the headers
        self._awaiting_headers = True
        self._begun = False  # the parser has seen the first byte of the request line
        self._header_bytes = 0  # bytes received for it so far (checked after each read)
        self._parsed_bytes = 0  # its request target and header fields as parsed (checked at their end)
        self._oversize = False
        self._completed_in_read = False  # a message ended in the current read

    # --- connection ---
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.transport = transport
            self._refused = True
            self._warn("refused", f"refused connections beyond max_connections={self.max_connections} (503)")
            self._write_response(503, b"Too many connections, retry later.", b"retry-after: 1\r\n")
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._finishing:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
            return
        # uvicorn's HttpToolsProtocol.data_received, with the header cap
        self._unset_keepalive_if_required()
        self._completed_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._oversize:  # raised by on_headers_complete
                self._too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self._cancel_timers()
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel_timers()  # the WebSocket protocol takes the connection over
                self.handle_websocket_upgrade()
                return
            self._unsupported_upgrade_warning()
        if self.transport.is_closing():
            self._cancel_timers()
            return
        if self._awaiting_headers:
            # a read that ended the previous message counts the new message's bytes the parser reported
            # (request target and header fields); any other read belongs to the awaited request as a whole
            self._header_bytes += self._parsed_bytes if self._completed_in_read else len(data)
            if self._header_bytes > self.max_header_bytes:
                self._too_large()
        elif self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)

    # --- parser callbacks ---
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        self._parsed_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._parsed_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._parsed_bytes += len(name) + len(value) + 4  # "name: value\r\n"

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        # the whole request line and headers, as parsed: also a request that arrived in one read
        size = self._parsed_bytes + len(self.parser.get_method()) + len(b"  HTTP/1.1\r\n\r\n")
        if size > self.max_header_bytes or self._header_bytes > self.max_header_bytes:
            self._oversize = True
            raise _HeadersTooLarge(size)
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._awaiting_headers, self._begun, self._header_bytes, self._parsed_bytes = True, False, 0, 0
        self._completed_in_read = True
        self._arm_header_timer()  # when the response went out before the body was in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    # --- limits ---
    def _idle(self) -> bool:
        """No response pending: a new request's headers are being waited for."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        if (self._header_timer is None and self._awaiting_headers and self._idle() and not self._finishing
                and not self.transport.is_closing()):
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _too_large(self) -> None:
        self._warn("431", f"request headers beyond max_header_bytes={self.max_header_bytes} (431)")
        if self._idle():
            self._finish(431, b"Request line and headers too large.")
        else:  # a pipelined request while an earlier response is being written: no room for an answer
            self._cancel_timers()
            self.transport.close()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._begun:
            self.transport.close()
            return
        self._warn("header_timeout", f"request headers not complete within header_timeout_s="
                                     f"{self.header_timeout_s:g} (408)")
        self._finish(408, b"Request headers not received in time.")

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._awaiting_headers:
            return
        if self.flow.read_paused:  # the server is not reading (flow control): not the client's delay
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)
            return
        cycle = self.cycle
        self._warn("body_timeout", f"request body not complete within body_timeout_s={self.body_timeout_s:g}; "
                                   "closing (408 unless a response had started)")
        if cycle is not None and not cycle.response_complete:
            answer = not cycle.response_started and not self.pipeline
            cycle.disconnected = True  # the application's receive() returns http.disconnect
            cycle.message_event.set()
            if answer:
                self._finish(408, b"Request body not received in time.")
                return
        self._cancel_timers()
        self.transport.close()

    def _finish(self, status: int, body: bytes) -> None:
        """Answer ``status`` and close: FIN first, then discard what still arrives for a while."""
        self._cancel_timers()
        self._unset_keepalive_if_required()
        self._finishing = True
        self._write_response(status, body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_left = LINGER_BYTES
            self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
            if self.flow is not None:
                self.flow.resume_reading()
        else:
            self.transport.close()

    def _write_response(self, status: int, body: bytes, extra_headers: bytes = b"") -> None:
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        extra_headers, b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))

    def _warn(self, kind: str, message: str) -> None:
        """One log line per kind every ``_LOG_EVERY_S`` seconds at most (a flood must not flood the log)."""
        now = time.monotonic()
        cls = GuardedHttpProtocol
        if now - cls._last_log.get(kind, float("-inf")) < _LOG_EVERY_S:
            cls._suppressed[kind] = cls._suppressed.get(kind, 0) + 1
            return
        cls._last_log[kind] = now
        suppressed = cls._suppressed.pop(kind, 0)
        client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        log.warning("%s%s%s", client, message,
                    f" ({suppressed} more since the last such line)" if suppressed else "")
