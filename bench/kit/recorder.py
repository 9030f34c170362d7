"""A recording HTTP listener: logs every request, then answers 404 or relays upstream.

Put it where containerd expects a mirror (or in front of the upstream) to see
exactly what containerd sends, or to count what reaches the upstream.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse
from dataclasses import dataclass

from bench.kit.procs import StartStop

HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade")
)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients (containerd) drop idle keep-alive connections; that is not an error.
        pass


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


class RequestRecorder(StartStop):
    """A threaded HTTP/1.1 server on a loopback address.

    With `upstream=None` every request gets a JSON 404 (a mirror that has
    nothing); with `upstream="127.0.0.1:PORT"` requests are relayed there.
    """

    def __init__(self, ip: str = "127.0.0.1", port: int = 0, upstream: str | None = None) -> None:
        if not ip.startswith("127."):
            raise ValueError(f"the kit binds loopback addresses only, not {ip}")
        self.upstream = upstream
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server = _QuietServer((ip, port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        ip, port = self._server.server_address[:2]
        return f"{ip!s}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"recorder {self.host}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def recorded(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        return type("Handler", (_RecordingHandler,), {"recorder": self})


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Answers for one `RequestRecorder` (set as `recorder` on a subclass) and records."""

    protocol_version = "HTTP/1.1"
    recorder: RequestRecorder

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        status = (
            self._relay(self.recorder.upstream) if self.recorder.upstream else self._not_found()
        )
        url = urllib.parse.urlsplit(self.path)
        self.recorder._record(
            RecordedRequest(
                method=self.command,
                path=url.path,
                query=urllib.parse.parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                status=status,
            )
        )

    def _not_found(self) -> int:
        body = b'{"errors":[{"code":"NOT_FOUND","message":"recorder has nothing"}]}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return 404

    def _relay(self, upstream: str) -> int:
        name, _, port = upstream.rpartition(":")
        conn = http.client.HTTPConnection(name, int(port), timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Host"] = upstream
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            if resp.getheader("Content-Length") is None:
                self.close_connection = True
            self.end_headers()
            while chunk := resp.read(1 << 16):
                self.wfile.write(chunk)
            return resp.status
        finally:
            conn.close()
