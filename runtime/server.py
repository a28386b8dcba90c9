"""HTTP API on 127.0.0.1 (``--serve HOST:PORT``): server-sent events, health, operator dive marks.

GET /events       text/event-stream, one ``data: <event JSON>`` per event (every type)
GET /health       JSON: backend, frames, drops, dives, segmenter, phase, source state
POST /dive/start  operator segmenter: a dive starts at the next frame (409 with another segmenter)
POST /dive/end    operator segmenter: the open dive ends at the next frame
POST /dive_number {"dive": I, "dive_number": "107b"} or {"dive": I, "start_list_row": R}: correct dive numbers

Requests that change state (the POSTs) need ``Authorization: Bearer TOKEN`` whenever a token is set;
one must be set (``--serve-token`` or ``FINEPARSER_SERVE_TOKEN``) to bind anything but loopback
(:func:`check_exposure`).  The read-only GETs stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
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
TOKEN_ENV = "FINEPARSER_SERVE_TOKEN"
MAX_BODY_BYTES = 4096
"""Largest POST body read (a dive-number correction is a few dozen bytes)."""


class DiveNumberError(ValueError):
    """A dive-number correction that cannot apply (HTTP 409): the dive was already scored, no start list, ..."""


def is_loopback(host: str) -> bool:
    """Whether binding `host` reaches this machine only (127.0.0.0/8, ::1, localhost); '' and 0.0.0.0 do not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_exposure(host: str, token: str | None) -> None:
    """A server reachable beyond loopback must have a token: ValueError (a usage error) otherwise."""
    if not is_loopback(host) and not token:
        raise ValueError(f"--serve binds {host or 'every interface'}, beyond this machine: give --serve-token TOKEN "
                         f"(or set {TOKEN_ENV}) so that only holders of the token can start or end dives and change "
                         "dive numbers; or bind 127.0.0.1")


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
    """ThreadingHTTPServer in a daemon thread, bound to the session's bus, health and operator callbacks.

    dive_number(dive, dive_number, start_list_row) -> dict: the session's correction (DiveNumberError: 409).
    token: required as ``Authorization: Bearer TOKEN`` on every POST when set (``check_exposure`` demands
    one for a non-loopback host; the CLI calls it before the server is made).
    """

    def __init__(self, address: tuple[str, int], bus: EventBus, health: Callable[[], dict[str, Any]],
                 operator: Callable[[str], bool],
                 dive_number: Callable[[int, str | None, int | None], dict[str, Any]] | None = None,
                 token: str | None = None) -> None:
        check_exposure(address[0], token)
        self.bus = bus
        self.health = health
        self.operator = operator
        self.dive_number = dive_number
        self.token = token or None
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
        log.info("serving http://%s:%d (/events, /health, POST /dive/start|end, /dive_number%s)", *self.address,
                 "; POSTs need the token" if self.token else "")
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

            def _authorised(self) -> bool:
                """No token set, or the request's bearer token equals it (constant-time comparison)."""
                if server.token is None:
                    return True
                scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                          server.token.encode())

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self.close_connection = True
                    self._json(413 if length > 0 else 400, {"error": f"expected a JSON body of at most "
                                                                     f"{MAX_BODY_BYTES} bytes"})
                    return
                body = self.rfile.read(length) if length else b""
                if self.path not in ("/dive/start", "/dive/end", "/dive_number"):
                    self._json(404, {"error": f"no such endpoint {self.path}; try /dive/start, /dive/end, "
                                              "/dive_number"})
                elif not self._authorised():
                    self.send_response(401)
                    data = (json.dumps({"error": "this request changes the session: send the server's token as "
                                                 "'Authorization: Bearer TOKEN' (--serve-token)"}) + "\n").encode()
                    self.send_header("WWW-Authenticate", 'Bearer realm="fineparser-live"')
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path == "/dive_number":
                    self._dive_number(body)
                elif server.operator(self.path.rsplit("/", 1)[1]):
                    self._json(202, {"accepted": self.path.rsplit("/", 1)[1]})
                else:
                    self._json(409, {"error": "dive marks need --segment operator"})

            def _dive_number(self, body: bytes) -> None:
                usage = ('expected JSON {"dive": I, "dive_number": "107b"} or {"dive": I, "start_list_row": R} '
                         "(I, R: 1, 2, ...)")
                try:
                    request = json.loads(body or b"null")
                except ValueError:
                    request = None
                if not isinstance(request, dict) or set(request) - {"dive", "dive_number", "start_list_row"}:
                    self._json(400, {"error": usage})
                    return
                dive, number, row = request.get("dive"), request.get("dive_number"), request.get("start_list_row")
                valid_dive = isinstance(dive, int) and not isinstance(dive, bool) and dive >= 1
                valid_number = isinstance(number, str) and number.strip() != ""
                valid_row = isinstance(row, int) and not isinstance(row, bool) and row >= 1
                if not valid_dive or (number is None) == (row is None) or (number is not None and not valid_number) \
                        or (row is not None and not valid_row):
                    self._json(400, {"error": usage})
                    return
                if server.dive_number is None:
                    self._json(409, {"error": "this server has no session to correct"})
                    return
                try:
                    self._json(200, server.dive_number(dive, number, row))
                except DiveNumberError as exc:
                    self._json(409, {"error": str(exc)})

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
