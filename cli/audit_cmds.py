"""audit log | show | verify | identify | head, verify, gc."""

from __future__ import annotations

from pathlib import Path

import click

from ._app import App, pass_app
from ._errors import CHECK_FAILED
from ._output import human_bytes, short


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident record of what patched what."""


@audit_group.command("log")
@click.option("--model", help="Events whose target or output is this checkpoint REF.")
@click.option("--vector", help="Events of this vector (name, hash prefix, or full hash of a removed one).")
@click.option("--family", help="Events of vectors or targets in this family (model type or id prefix).")
@click.option("--kind", help="patch | vector.register | vector.score | vector.remove")
@click.option("--actor")
@click.option("--since", help="ISO date/time.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the last N events.")
@pass_app
def audit_log(app: App, model: str | None, vector: str | None, family: str | None, kind: str | None,
              actor: str | None, since: str | None, limit: int | None) -> None:  # fmt: skip
    """List audit events, oldest first."""
    recs = app.registry().audit_log(model=model, vector=vector, family=family, kind=kind, actor=actor,
                                    since=since, limit=limit)  # fmt: skip
    app.out.emit({"events": [r.to_json() for r in recs]}, lambda: app.out.table(
        None, ["seq", "event", "kind", "when", "actor", "vector", "target", "output"],
        [[r.seq, short(r.uid, 8), r.kind, r.created_at[:19], r.actor, short(r.vector_hash),
          short(r.target_hash), short(r.output_hash)] for r in recs]))  # fmt: skip


@audit_group.command("show")
@click.argument("event_id")
@pass_app
def audit_show(app: App, event_id: str) -> None:
    """Show one event (seq number or event id)."""
    rec = app.registry().audit_show(event_id)
    app.out.emit(rec.to_json(), lambda: app.out.table(
        f"event {rec.seq}", ["field", "value"], [[k, v] for k, v in rec.to_json().items()]))


@audit_group.command("verify")
@click.option("--verify-key", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM Ed25519 public key: every event must be signed by it.")
@pass_app
def audit_verify(app: App, verify_key: Path | None) -> None:
    """Walk the hash chain and check signatures; exit 1 naming the first bad entry."""
    rep = app.registry().audit_verify(verify_key=verify_key)
    data = {"ok": rep.ok, "problems": rep.problems, "length": rep.length, "head": rep.head,
            "first_bad_seq": rep.first_bad_seq}  # fmt: skip
    app.out.emit(data, lambda: app.out.console.print(
        f"audit chain ok: {rep.length} events, head {short(rep.head)}" if rep.ok
        else "audit chain BROKEN: " + "; ".join(rep.problems)))  # fmt: skip
    if not rep.ok:
        raise click.exceptions.Exit(CHECK_FAILED)


@audit_group.command("head")
@pass_app
def audit_head(app: App) -> None:
    """Print the chain head, to keep outside the database as an anchor."""
    data = app.registry().audit_head()
    app.out.emit(data, lambda: app.out.console.print(f"{data['length']} {data['head']}"))


@audit_group.command("identify")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@pass_app
def audit_identify(app: App, model_dir: Path) -> None:
    """Find the patch event that produced MODEL_DIR, from its files alone."""
    rec = app.registry().identify(model_dir)
    app.out.emit(rec.to_json(), lambda: app.out.console.print(
        f"event {rec.seq} ({rec.event}) found by {rec.method}: vector {short(rec.vector)} patched "
        f"{short(rec.target)} → {short(rec.output)}; λ = {rec.coefficients}"))  # fmt: skip


@click.command("verify")
@click.option("--quick", is_flag=True, help="Check presence only; do not re-hash blob contents.")
@click.option("--verify-key", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM Ed25519 public key: every audit event must be signed by it.")
@pass_app
def verify(app: App, quick: bool, verify_key: Path | None) -> None:
    """Re-hash blobs, check catalog ↔ store both ways, walk the audit chain (exit 1 on problems)."""
    rep = app.registry().verify(deep=not quick, verify_key=verify_key)

    def human() -> None:
        head = "ok" if rep.ok else f"{len(rep.problems)} problem(s)"
        app.out.console.print(f"verify: {head} ({rep.blobs_checked} blobs, {rep.events_checked} events)")
        for p in rep.problems:
            app.out.console.print(f"  problem: {p}")
        for r in rep.removable:
            app.out.console.print(f"  removable by `safegene gc`: {r}")

    app.out.emit(rep.to_json(), human)
    if not rep.ok:
        raise click.exceptions.Exit(CHECK_FAILED)


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--grace", type=click.FloatRange(min=0.0), default=3600.0, show_default=True,
              help="Keep unreferenced blobs and temp files younger than this many seconds.")
@pass_app
def gc(app: App, dry_run: bool, grace: float) -> None:
    """Remove unreferenced blobs and stale temp files."""
    rep = app.registry().gc(dry_run=dry_run, temp_age_s=grace)
    verb = "would remove" if dry_run else "removed"
    app.out.emit(rep.to_json(), lambda: app.out.console.print(
        f"{verb} {len(rep.removed_blobs)} blob(s) and {len(rep.removed_temp_files)} temp file(s), "
        f"{human_bytes(rep.freed_bytes)}"))  # fmt: skip


COMMANDS = [audit_group, verify, gc]
