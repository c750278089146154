"""`safegene serve`'s JSON API against a real uvicorn process over the demo's home (and PostgreSQL)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner

from cli._errors import exit_code_for
from cli.main import cli
from registry import errors as e
from registry.api import Registry
from registry.serve.errors import CODE_NAMES, classify
from tests.serve_fixtures import Server, start_server, stop_server

TOKEN = "alice-token-0123456789"


def _get(server: Server, path: str, **kw: object) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kw)  # type: ignore[arg-type]


def _ok(server: Server, path: str) -> dict:
    r = _get(server, path)
    assert r.status_code == 200, (path, r.status_code, r.text[:500])
    return r.json()


def _cli_json(home: Path, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["--home", str(home), "--json", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_inventory_shows_the_demo_families_vectors_models_and_events(demo_server: Server, demo_home: Path) -> None:
    fams = _ok(demo_server, "/api/families")["families"]
    assert [f["model_type"] for f in fams] == ["llama"] and fams[0]["num_vectors"] == 1
    fam = _ok(demo_server, "/api/families/llama")
    vec_name = fam["vectors"][0]["name"]
    assert vec_name == "llama-s0-quick-safety"
    roles = sorted(c["role"] for c in fam["checkpoints"])
    assert roles.count("patched") == 4 and "aligned" in roles and "degraded" in roles
    cli_events = _cli_json(demo_home, "audit", "log")["events"]
    api_events = _ok(demo_server, "/api/audit?limit=200")["events"]
    assert [ev["uid"] for ev in api_events] == [ev["uid"] for ev in reversed(cli_events)]  # newest first


def test_vector_has_provenance_scores_recalibrations_and_patched_models(demo_server: Server,
                                                                        demo_home: Path) -> None:  # fmt: skip
    doc = _ok(demo_server, "/api/vectors/llama-s0-quick-safety")
    cli_vec = _cli_json(demo_home, "vector", "show", "llama-s0-quick-safety")
    assert doc["vector"]["hash"] == cli_vec["hash"]
    assert doc["aligned"]["hash"] == cli_vec["aligned"] and doc["aligned"]["role"] == "aligned"
    assert doc["degraded"]["hash"] == cli_vec["degraded"] and doc["degraded"]["role"] == "degraded"
    assert [lay["score"] for lay in doc["vector"]["layers"]] == [lay["score"] for lay in cli_vec["layers"]]
    assert doc["vector"]["selected_layers"] == [lay["index"] for lay in cli_vec["layers"] if lay["selected"]]
    assert len(doc["recalibrations"]) == 2 and all(r["coefficients"] for r in doc["recalibrations"])
    assert doc["num_recalibrations"] == 2 and doc["patched_page"]["total"] == 4
    patched = doc["patched"]
    assert len(patched) == 4
    cli_patches = {ev["uid"]: ev for ev in _cli_json(demo_home, "audit", "log", "--kind", "patch")["events"]}
    for p in patched:
        ev = cli_patches[p["event"]]
        assert p["output"]["hash"] == ev["output_hash"] and p["output"]["name"]
        assert p["coefficients"] == ev["payload"]["coefficients"] and p["actor"] == ev["actor"]
    assert {p["coefficient_spec"] for p in patched} == {"auto", "uniform:1.0"}


def test_model_lineage_runs_from_the_pair_through_the_vector_to_the_patched_model(demo_server: Server) -> None:
    patched = _ok(demo_server, "/api/vectors/llama-s0-quick-safety")["patched"][0]
    doc = _ok(demo_server, f"/api/models/{patched['output']['hash']}")
    lin = doc["lineage"]
    assert doc["model"]["role"] == "patched"
    assert lin["ancestors"][0]["hash"] == patched["target"]["hash"] and lin["ancestors"][0]["role"] == "task"
    made = lin["patched_by"]
    assert made["event"] == patched["event"] and made["vector"]["name"] == "llama-s0-quick-safety"
    assert made["vector"]["aligned"]["name"] == "llama-s0-aligned"
    assert made["vector"]["degraded"]["name"] == "llama-s0-degraded"
    task = _ok(demo_server, f"/api/models/{patched['target']['hash']}")["lineage"]
    assert task["patched_by"] is None and {p["output"]["hash"] for p in task["patches"]} >= {patched["output"]["hash"]}


def test_pages_of_every_listing_are_stable_and_complete(demo_server: Server) -> None:
    full = [ev["uid"] for ev in _ok(demo_server, "/api/audit?limit=200")["events"]]
    seen, offset = [], 0
    while offset is not None:
        doc = _ok(demo_server, f"/api/audit?limit=3&offset={offset}")
        seen += [ev["uid"] for ev in doc["events"]]
        offset = doc["page"]["next_offset"]
    assert seen == full and len(full) == 8
    models = [m["hash"] for m in _ok(demo_server, "/api/models?limit=200")["models"]]
    paged = _ok(demo_server, "/api/models?limit=4")["models"] + _ok(demo_server, "/api/models?limit=4&offset=4")["models"]
    assert [m["hash"] for m in paged] == models[:8]
    assert _ok(demo_server, "/api/vectors?limit=1")["page"]["next_offset"] is None


def test_audit_filters_match_the_cli(demo_server: Server, demo_home: Path) -> None:
    for args, query in ((["--kind", "patch"], "kind=patch"), (["--kind", "recalibrate"], "kind=recalibrate"),
                        (["--family", "llama"], "family=llama"), (["--vector", "llama-s0-quick-safety"],
                                                                  "vector=llama-s0-quick-safety")):  # fmt: skip
        want = [ev["seq"] for ev in _cli_json(demo_home, "audit", "log", *args)["events"]]
        got = [ev["seq"] for ev in _ok(demo_server, f"/api/audit?{query}&limit=200")["events"]]
        assert got == want[::-1] and got, query
    actor = _ok(demo_server, "/api/audit?limit=1")["events"][0]["actor"]
    assert len(_ok(demo_server, f"/api/audit?actor={actor}&limit=200")["events"]) == 8
    assert _ok(demo_server, "/api/audit?actor=nobody")["events"] == []
    assert _ok(demo_server, "/api/audit?since=2999-01-01")["events"] == []


def test_chain_status_is_verify_and_head(demo_server: Server, demo_home: Path) -> None:
    doc = _ok(demo_server, "/api/chain")
    head = _cli_json(demo_home, "audit", "head")
    assert doc["ok"] is True and doc["problems"] == []
    assert (doc["length"], doc["head"]) == (head["length"], head["head"]) == (8, doc["head"])


def test_identify_by_tensor_hash_and_by_uploaded_headers(demo_server: Server, demo_home: Path) -> None:
    patched = _ok(demo_server, "/api/vectors/llama-s0-quick-safety")["patched"][0]
    by_hash = _ok(demo_server, f"/api/identify?hash={patched['output']['hash']}")
    assert by_hash["event"] == patched["event"] and by_hash["method"] == "content-hash"
    with Registry.open(demo_home, create=False) as reg:
        folder = Path(reg.get_model(patched["output"]["hash"]).path)
    raw = (folder / "model.safetensors").read_bytes()
    header = raw[: 8 + int.from_bytes(raw[:8], "little")]  # the header only: never the weights
    r = httpx.post(demo_server.url + "/api/identify", content=header, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["event"] == patched["event"] and r.json()["method"] == "metadata"
    assert r.json()["coefficients"] == patched["coefficients"]
    r = _get(demo_server, "/api/identify?hash=" + "ab" * 32)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


def test_resolve_search_and_openapi(demo_server: Server) -> None:
    task = _ok(demo_server, "/api/models?role=task")["models"][0]["name"]
    cands = _ok(demo_server, f"/api/resolve?model={task}")["candidates"]
    assert cands and cands[0]["name"] == "llama-s0-quick-safety" and cands[0]["compatible"]
    vec_hash = _ok(demo_server, "/api/vectors?limit=1")["vectors"][0]["hash"]
    assert [v["name"] for v in _ok(demo_server, "/api/search?q=quick-SAF")["vectors"]] == ["llama-s0-quick-safety"]
    assert [v["name"] for v in _ok(demo_server, f"/api/search?q={vec_hash[:8]}")["vectors"]] == ["llama-s0-quick-safety"]
    found = _ok(demo_server, "/api/search?q=llama")
    assert [f["model_type"] for f in found["families"]] == ["llama"] and len(found["models"]) >= 4
    assert _ok(demo_server, "/api/search?q=%25")["vectors"] == []  # LIKE wildcards are literal
    schema = _ok(demo_server, "/openapi.json")
    for path in ("/api/families", "/api/vectors/{ref}", "/api/audit", "/api/chain", "/api/identify", "/api/resolve"):
        assert path in schema["paths"], path


def test_no_response_reveals_file_system_paths(demo_server: Server, demo_home: Path) -> None:
    root = str(demo_home.parent)
    patched = _ok(demo_server, "/api/vectors/llama-s0-quick-safety")["patched"][0]
    for path in ("/api/models", "/api/audit?limit=200", f"/api/models/{patched['output']['hash']}",
                 "/api/families/llama", "/api/search?q=llama", "/", "/audit", f"/models/{patched['output']['hash']}",
                 "/api/identify?hash=" + "cd" * 32):  # fmt: skip
        text = _get(demo_server, path).text
        assert root not in text and "/tmp/" not in text, path
    assert all(m["path"] is None for m in _ok(demo_server, "/api/models")["models"])


def test_errors_carry_the_cli_exit_code_names(demo_server: Server) -> None:
    r = _get(demo_server, "/api/vectors/no-such-vector")
    assert r.status_code == 404
    assert r.json()["error"] == {"code": "NOT_FOUND", "exit_code": 3,
                                 "message": "no vector matches 'no-such-vector': list them with `safegene vector ls`"}
    samples = [e.VectorNotFoundError("x"), e.AmbiguousReferenceError("ab", ["a", "b"]), e.AlreadyExistsError("x"),
               e.InvalidCheckpointError("p", "bad"), e.InvalidInputError("x"), e.IncompatibleError("x"),
               e.IntegrityCheckError("x"), e.SchemaOutdatedError("1", "2"), e.ConfigurationError("x"),
               e.ConflictError("x"), e.RegistryError("x"), RecursionError(), OSError("x")]  # fmt: skip
    for exc in samples:
        status, code = classify(exc)
        assert code == exit_code_for(exc) and code in CODE_NAMES and 400 <= status < 600, exc


def test_requests_are_logged_with_their_actor(demo_server: Server) -> None:
    assert _get(demo_server, "/api/families?limit=7", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert _get(demo_server, "/api/vectors?limit=3").status_code == 200
    log = demo_server.log_text()
    assert "actor=alice GET /api/families 200" in log
    assert "actor=anonymous GET /api/vectors 200" in log


def test_tokens_can_be_required_and_paths_exposed(tmp_path: Path, demo_home: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nbob:bob-secret-token-0123\n")
    server = start_server(demo_home, tmp_path / "log", "--tokens", str(tokens), "--require-token", "--expose-paths")
    try:
        r = _get(server, "/api/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        assert "bearer token" in r.json()["error"]["message"] and r.headers["www-authenticate"] == "Bearer"
        r = _get(server, "/api/models", headers={"Authorization": "Bearer bob-secret-token-0123"})
        assert r.status_code == 200 and all(Path(m["path"]).is_absolute() for m in r.json()["models"])
        assert "actor=bob GET /api/models 200" in server.log_text()
    finally:
        stop_server(server)


def test_several_worker_processes_answer_alike_with_the_same_tokens(tmp_path: Path, demo_home: Path,
                                                                   demo_server: Server) -> None:  # fmt: skip
    tokens = tmp_path / "tokens"
    tokens.write_text("carol:carol-secret-token-0123\n")
    server = start_server(demo_home, tmp_path / "log", "--workers", "2", "--threads", "2", "--tokens", str(tokens),
                          "--require-token")  # fmt: skip
    try:
        workers = psutil.Process(server.proc.pid).children(recursive=True)
        assert len([p for p in workers if "python" in p.name().lower()]) >= 2, [p.cmdline() for p in workers]
        auth = {"Authorization": "Bearer carol-secret-token-0123"}
        expected = {path: _ok(demo_server, path) for path in ("/api/families", "/api/vectors", "/api/audit?limit=5")}
        for i in range(24):  # a new connection each time: the kernel hands them to either worker
            path = list(expected)[i % len(expected)]
            r = _get(server, path, headers=auth)
            assert r.status_code == 200 and r.json() == expected[path], path
        r = _get(server, "/api/families")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        assert server.log_text().count("actor=carol GET /api/") == 24
        assert "with 2 worker processes" in server.log_text()
        assert len(re.findall(r"process \d+ answers at most 2 requests at once", server.log_text())) == 2
    finally:
        stop_server(server)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"processes outlive the server: {[p.cmdline() for p in alive]}"


@pytest.mark.parametrize("bad", ["bob:short", "no-colon-token-0123456789"])
def test_malformed_token_files_stop_the_server_with_one_line(tmp_path: Path, demo_home: Path, bad: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(bad + "\n")
    res = CliRunner().invoke(cli, ["--home", str(demo_home), "serve", "--tokens", str(tokens)])
    assert res.exit_code == 9 and "ACTOR:TOKEN" in res.output and "Traceback" not in res.output


def test_serves_a_postgresql_catalog(tmp_path: Path, pg_url: str, tiny_models: dict[str, Path]) -> None:
    with Registry.open(tmp_path / "home", pg_url) as reg:
        reg.add_model(tiny_models["llama"], name="pg-aligned", role="aligned")
        reg.add_model(tiny_models["llama_b"], name="pg-degraded", role="degraded")
        vec = reg.extract_vector("pg-aligned", "pg-degraded", name="pg-safety")
        res = reg.patch(tiny_models["llama_b"], "pg-safety", tmp_path / "patched", coefficients="uniform:0.5",
                        layers="all")  # fmt: skip
    server = start_server(tmp_path / "home", tmp_path / "log", db_url=pg_url)
    try:
        assert _ok(server, "/api/health")["catalog"].startswith("postgresql")
        doc = _ok(server, "/api/vectors/pg-safety")
        assert doc["vector"]["hash"] == vec.hash and doc["aligned"]["name"] == "pg-aligned"
        assert [p["output"]["hash"] for p in doc["patched"]] == [res.hash]
        assert set(doc["patched"][0]["coefficients"].values()) == {0.5}
        assert _ok(server, f"/api/identify?hash={res.hash}")["event"] == res.event
        assert _ok(server, "/api/chain")["ok"] is True
        r = _get(server, "/api/vectors/a%00b")
        assert r.status_code == 400 and r.json()["error"]["code"] == "USAGE"
    finally:
        stop_server(server)
