"""Hostile requests to a real `safegene serve`: every one gets a 4xx with a clear message, never a 500."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.serve_fixtures import Server

HUGE = "x" * 10_000


def _assert_clear_4xx(r: httpx.Response, code: str | None = None) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["message"] and len(err["message"]) <= 600 and "Traceback" not in err["message"]
    if code:
        assert err["code"] == code, err
    return err


@pytest.mark.parametrize("path, code", [
    ("/api/vectors/..%2F..%2Fetc%2Fpasswd", "NOT_FOUND"),
    ("/api/vectors/%2Fetc%2Fpasswd", "NOT_FOUND"),
    ("/api/vectors/..", "NOT_FOUND"),
    ("/api/models/..%5C..%5Cwindows", "NOT_FOUND"),
    ("/api/vectors/a%00b", "USAGE"),
    ("/api/models/%0d%0aSet-Cookie:x", "USAGE"),
    ("/api/families/" + "f" * 201, "USAGE"),
    ("/api/audit/" + "9" * 150, "NOT_FOUND"),
    ("/api/vectors?family=../../etc", "NOT_FOUND"),
    ("/api/audit?model=/etc/passwd", "NOT_FOUND"),
    (f"/api/audit?actor={HUGE}", "USAGE"),
    (f"/api/search?q={HUGE}", "USAGE"),
    ("/api/audit?since=not-a-date", "INVALID_INPUT"),
    ("/api/audit?since=9999-99-99", "INVALID_INPUT"),
    ("/api/vectors?limit=-1", "USAGE"),
    ("/api/vectors?limit=100000000000000000000", "USAGE"),
    ("/api/vectors?offset=abc", "USAGE"),
    ("/api/vectors?offset=99999999999", "USAGE"),
    ("/api/identify?hash=../../x", "USAGE"),
    ("/api/identify?hash=abcd", "INVALID_INPUT"),
    ("/api/resolve", "USAGE"),
    ("/api/resolve?model=", "INVALID_INPUT"),
    ("/api/audit/%C2%B2", "NOT_FOUND"),
    ("/api/resolve?model=%25%25", "NOT_FOUND"),
    ("/api/no-such-endpoint", "NOT_FOUND"),
])
def test_hostile_query_and_path_values(demo_server: Server, path: str, code: str) -> None:
    err = _assert_clear_4xx(httpx.get(demo_server.url + path, timeout=30), code)
    assert "/etc/passwd" not in err["message"] or code == "NOT_FOUND"


def test_a_url_past_the_server_limit_is_refused_not_crashed(demo_server: Server) -> None:
    host, port = demo_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /api/search?q=" + b"y" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4"), status_line  # refused by the HTTP layer, not a crash
    assert httpx.get(demo_server.url + "/api/health", timeout=30).status_code == 200


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Bearer", "Basic YWxpY2U6cHc=", "Bearer " + "z" * 8000,
                                    "alice-token-0123456789"])
def test_bad_tokens_are_refused_with_401(demo_server: Server, header: str) -> None:
    r = httpx.get(demo_server.url + "/api/families", headers={"Authorization": header}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    err = _assert_clear_4xx(r, "UNAUTHORIZED")
    assert "token" in err["message"].lower() or "bearer" in err["message"].lower()


def test_writes_are_not_offered(demo_server: Server) -> None:
    for method, path in (("DELETE", "/api/vectors/llama-s0-quick-safety"), ("PUT", "/api/families"),
                         ("POST", "/api/vectors"), ("PATCH", "/api/audit/1")):  # fmt: skip
        r = httpx.request(method, demo_server.url + path, timeout=30)
        assert r.status_code == 405, (method, path)
        _assert_clear_4xx(r, "USAGE")
    assert httpx.get(demo_server.url + "/api/vectors/llama-s0-quick-safety", timeout=30).status_code == 200


@pytest.mark.parametrize("body", [
    b"",
    b"\x01\x00",
    (10**12).to_bytes(8, "little") + b"{}",
    (5).to_bytes(8, "little") + b"notjs",
    (2).to_bytes(8, "little") + b"[]",
    (30).to_bytes(8, "little") + json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()[:30],
    (4).to_bytes(8, "little") + b"[[[[",
])
def test_malformed_header_uploads(demo_server: Server, body: bytes) -> None:
    r = httpx.post(demo_server.url + "/api/identify", content=body, timeout=30)
    _assert_clear_4xx(r, "INVALID_INPUT")


def test_deeply_nested_header_upload(demo_server: Server) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(demo_server.url + "/api/identify", content=len(raw).to_bytes(8, "little") + raw, timeout=30)
    _assert_clear_4xx(r, "INVALID_INPUT")


def test_header_without_safegene_metadata_is_not_found(demo_server: Server) -> None:
    raw = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    r = httpx.post(demo_server.url + "/api/identify", content=len(raw).to_bytes(8, "little") + raw.encode(), timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


def test_uploads_larger_than_a_header_are_refused_unread(demo_server: Server) -> None:
    r = httpx.post(demo_server.url + "/api/identify", content=b"\0" * (17 * 1024 * 1024), timeout=60)
    assert r.status_code == 413
    assert "never the weights" in _assert_clear_4xx(r, "INVALID_INPUT")["message"]


def test_pages_answer_hostile_input_with_an_html_error(demo_server: Server) -> None:
    for path, status in (("/vectors/..%2F..", 404), ("/models/a%00b", 400), (f"/search?q={HUGE}", 400),
                         ("/audit?since=garbage", 400), ("/audit?limit=0", 400)):  # fmt: skip
        r = httpx.get(demo_server.url + path, timeout=30)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html") and "error-message" in r.text
    assert "<script>" not in httpx.get(demo_server.url + "/search?q=<script>alert(1)</script>", timeout=30).text
