"""HTTP API on 127.0.0.1 (``--serve HOST:PORT``): server-sent events, health, operator dive marks.

GET /events      text/event-stream, one ``data: <event JSON>`` per event (every type)
GET /health      JSON: backend, frames, drops, dives, segmenter, source state
POST /dive/start operator segmenter: a dive starts at the next frame (409 with another segmenter)
POST /dive/end   operator segmenter: the open dive ends at the next frame
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from runtime.events import EventBus

log = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 5.0


def parse_address(text: str) -> tuple[str, int]:
    """'PORT', ':PORT' or 'HOST:PORT' -> (host, port); the host defaults to 127.0.0.1 (loopback only)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--serve expects HOST:PORT or PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--serve port {number} is out of range")
    return host or "127.0.0.1", number


class LiveServer:
    """ThreadingHTTPServer in a daemon thread, bound to the session's bus, health and operator callbacks."""

    def __init__(self, address: tuple[str, int], bus: EventBus, health: Callable[[], dict[str, Any]],
                 operator: Callable[[str], bool]) -> None:
        self.bus = bus
        self.health = health
        self.operator = operator
        self.closing = threading.Event()
        try:
            self.httpd = ThreadingHTTPServer(address, self._handler_class())
        except OSError as exc:
            raise OSError(f"cannot serve on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> LiveServer:
        """Serve in the background."""
        self.thread.start()
        log.info("serving http://%s:%d (/events, /health, POST /dive/start|end)", *self.address)
        return self

    def close(self) -> None:
        """Stop serving; open event streams end."""
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
                log.debug("http %s " + format, self.client_address[0], *args)

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = (json.dumps(body) + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                if self.path == "/health":
                    self._json(200, server.health())
                elif self.path == "/events":
                    self._events()
                else:
                    self._json(404, {"error": f"no such endpoint {self.path}; try /events, /health"})

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path not in ("/dive/start", "/dive/end"):
                    self._json(404, {"error": f"no such endpoint {self.path}; try /dive/start, /dive/end"})
                elif server.operator(self.path.rsplit("/", 1)[1]):
                    self._json(202, {"accepted": self.path.rsplit("/", 1)[1]})
                else:
                    self._json(409, {"error": "dive marks need --segment operator"})

            def _events(self) -> None:
                inbox: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)

                def deliver(event: dict[str, Any]) -> None:
                    try:
                        inbox.put_nowait(event)
                    except queue.Full:  # a stalled client loses events, the pipeline does not wait
                        pass

                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                server.bus.subscribe(deliver)
                try:
                    while not server.closing.is_set():
                        try:
                            event = inbox.get(timeout=SSE_KEEPALIVE_S)
                        except queue.Empty:
                            self.wfile.write(b": keep-alive\n\n")
                            self.wfile.flush()
                            continue
                        self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    server.bus.unsubscribe(deliver)
                    self.close_connection = True

        return Handler
