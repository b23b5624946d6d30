"""Local receivers for what the tool sends out (webhooks, heartbeat pings): a real HTTP
server on 127.0.0.1 in a thread, recording every request, stopped when the block ends."""
from __future__ import annotations

import http.server
import json
import threading
from contextlib import contextmanager


class Receiver:
    """What the HTTP receiver got: ``[{"method", "path", "body"}]`` (body: parsed JSON, or
    the text when it is not JSON, or None when empty), in arrival order."""

    def __init__(self):
        self.got: list[dict] = []
        self.lock = threading.Lock()

    def posts(self, prefix: str) -> list[dict]:
        """The requests whose path starts with ``prefix``."""
        with self.lock:
            return [g for g in self.got if g["path"].startswith(prefix)]

    def bodies(self) -> list:
        """Every request's body, in arrival order."""
        with self.lock:
            return [g["body"] for g in self.got]


@contextmanager
def http_receiver(status: int = 200):
    """``(port, Receiver)``: an HTTP server on 127.0.0.1 answering every GET and POST with
    ``status`` (a body ``OK`` unless 204), recording each request."""
    rec = Receiver()

    class H(http.server.BaseHTTPRequestHandler):
        def _record(self, method):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n).decode() if n else ""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            with rec.lock:
                rec.got.append({"method": method, "path": self.path, "body": body})
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Length", "2")
            self.end_headers()
            if status != 204:
                self.wfile.write(b"OK")

        def do_POST(self):
            self._record("POST")

        def do_GET(self):
            self._record("GET")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], rec
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def tcp_server(answer):
    """``(port, stop)``: a TCP server on 127.0.0.1 calling ``answer(conn, stop)`` for each
    connection in a thread of its own, then closing it. ``stop`` (a threading.Event) is set
    when the block ends, so an answer that loops (a server that trickles) ends too."""
    import socket
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    stop = threading.Event()

    def talk(c):
        try:
            answer(c, stop)
        except OSError:
            pass
        finally:
            c.close()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=talk, args=(c,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], stop
    finally:
        stop.set()
        t.join(5)
        srv.close()
