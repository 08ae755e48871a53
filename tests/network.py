"""Things on the path between the orchestrator and the agent, for the trust tests: a TCP relay
that records what the orchestrator sends, and an impostor that answers in the agent's place
with a TLS key of its own. Both listen on a loopback address and stop with the test."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import ssl
import threading
from pathlib import Path


class TcpRelay:
    """Listens on (host, port) and relays each connection to target; every byte the client
    sends is kept in `sent`."""

    def __init__(self, host: str, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.connections += 1
            self._open += [client, upstream]
            for src, dst, record in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pipe, args=(src, dst, record), daemon=True)
                t.start()
                self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        src.settimeout(1)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)
        for sock in self._open:
            sock.close()


class Impostor:
    """An HTTPS server with its own key on (host, port) that answers every request as a
    healthy agent would, and keeps each request's method, path and headers in `requests`."""

    def __init__(self, host: str, port: int, key: Path, cert: Path) -> None:
        self.requests: list[dict] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers)}
                )
                body = json.dumps({"status": "ok", "version": "0.1.0", "busy": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
