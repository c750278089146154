"""An HTTP proxy on loopback, in front of the S3 server, that breaks chosen exchanges.

The store's client talks to the proxy as to any S3 endpoint; each request is
forwarded to the real server unless a rule says otherwise:

* ``drop-request``: close the connection before forwarding (the server never sees it);
* ``drop-response``: forward, then close without answering (the server did it; the client cannot know);
* ``truncate``: answer with the real headers (Content-Length included) and half the body, then close;
* ``corrupt``: answer in full, with one byte of the body flipped;
* ``slow-down``: answer 503 SlowDown (S3's throttling) without forwarding;
* ``delay``: wait ``delay_s`` before forwarding;
* ``pass``: forward untouched (a rule that only counts, or shields the first requests from later rules).

A rule matches a method and a substring of the path, and fires ``times`` times
(-1: always). ``hits`` counts the requests each rule broke.
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class Rule:
    method: str
    path_contains: str
    action: str
    times: int = 1
    delay_s: float = 0.0
    hits: int = 0


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, method: str, path_contains: str, action: str, *, times: int = 1, delay_s: float = 0.0) -> Rule:
        rule = Rule(method, path_contains, action, times, delay_s)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.method == method and rule.path_contains in path and rule.times != 0:
                    rule.times -= 1 if rule.times > 0 else 0
                    rule.hits += 1
                    return rule
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _proxy(self) -> None:
        body = self._read_body()
        rule = self.owner.take(self.command, self.path)
        action = rule.action if rule else None
        if action == "drop-request":
            return self._hang_up()
        if action == "slow-down":
            msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        if action == "delay" and rule is not None:
            threading.Event().wait(rule.delay_s)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if self.command in ("PUT", "POST") or body:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, reply_headers = resp.status, resp.getheaders()
        except OSError:  # the server is gone (a test ended while this request waited)
            return self._hang_up()
        finally:
            conn.close()
        if action == "drop-response":
            return self._hang_up()
        if action == "corrupt" and data:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x40
            data = bytes(flipped)
        self.send_response(status)
        for k, v in reply_headers:
            if k.lower() not in _HOP:
                self.send_header(k, v)
        if self.command != "HEAD" and not any(k.lower() == "content-length" for k, _ in reply_headers):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if action == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._hang_up()
        self.wfile.write(data)
