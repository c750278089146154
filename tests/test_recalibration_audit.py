"""Cached coefficients are tamper-evident: a recalibration's audit event records their digest (issue 19.8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from cli.main import cli
from registry.api import Registry
from registry.catalog import models as m
from registry.errors import IntegrityCheckError
from registry.method.fit_settings import FitSettings
from registry.toy.build import ToyWorld

FAST = FitSettings(steps=3)


def test_an_edited_cached_fit_is_refused_and_verify_names_it(tmp_path: Path, quick_world: ToyWorld) -> None:
    reg = Registry.open(tmp_path / "home")
    reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    task = quick_world.task_model(quick_world.tasks[0])
    shots = quick_world.shots[quick_world.tasks[0]]
    fit = reg.recalibrate(task, "safety", shots, layers="all", settings=FAST)
    events = reg.audit_log()
    recal = [e for e in events if e.kind == "recalibrate"]
    assert len(recal) == 1 and recal[0].target_hash == fit.target
    assert reg.recalibrate(task, "safety", shots, layers="all", settings=FAST).cached  # attested: used
    assert reg.verify().ok

    def edit(session):  # type: ignore[no-untyped-def]
        row = session.scalar(select(m.Recalibration))
        lam = json.loads(row.coefficients_json)
        session.execute(update(m.Recalibration).values(
            coefficients_json=json.dumps({k: 2.0 for k in lam}, sort_keys=True, separators=(",", ":"))))

    reg.transaction(edit)
    with pytest.raises(IntegrityCheckError, match="do not match the audit event"):
        reg.recalibrate(task, "safety", shots, layers="all", settings=FAST)
    rep = reg.verify()
    assert not rep.ok and any("do not match the audit event" in p for p in rep.problems)
    res = CliRunner().invoke(cli, ["--home", str(reg.home), "patch", str(task), "--vector", "safety", "--out",
                                   str(tmp_path / "out"), "--shots", str(shots), "--layers", "all", "--steps", "3"])
    assert res.exit_code == 7 and "audit event" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
    reg.close()


def test_a_fit_without_its_event_is_fitted_again(tmp_path: Path, quick_world: ToyWorld) -> None:
    """A cached fit older than the check (no event vouches for it) is not trusted: it is fitted anew."""
    reg = Registry.open(tmp_path / "home")
    reg.extract_vector(quick_world.models["aligned"], quick_world.models["degraded"], name="safety")
    task = quick_world.task_model(quick_world.tasks[0])
    shots = quick_world.shots[quick_world.tasks[0]]
    reg.recalibrate(task, "safety", shots, layers="all", settings=FAST)
    reg.transaction(lambda s: s.execute(update(m.AuditEvent).where(m.AuditEvent.kind == "recalibrate")
                                        .values(kind="recalibrate-old")))  # breaks the chain: only for this check
    again = reg.recalibrate(task, "safety", shots, layers="all", settings=FAST)
    assert not again.cached
    reg.close()
