"""Operator commands for the learning loop; the lead registers them on the root CLI:

* ``normal_app``  -> ``soundwatch normal confirm|list|revoke|audit`` (confirmed-normal intervals)
* ``models_app``  -> ``soundwatch models list|show|promote|rollback|sign`` (the registry, current version)
* ``retrain``     -> ``soundwatch retrain [--machine-type T] (--once | --schedule CRON)``
* ``archive_app`` -> ``soundwatch archive run`` (the audio archive consumer)

Times accept ISO-8601 (naive = UTC), ``now``, relative forms (``-2h``, ``-30m``, ``-1d``) and epoch
seconds. Errors are :class:`soundwatch.errors.SoundwatchError` subclasses, which the root CLI turns
into one message and a named exit code.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from soundwatch.choices import Device
from soundwatch.console import err_console
from soundwatch.errors import BadInput, ConfigError, ServiceUnavailable
from soundwatch.model.metadata import ArtifactMetadata
from soundwatch.settings import MIN_SIGNING_KEY_CHARS, ArchiveSettings, Settings, get_settings
from training.service.archive import ArchiveConsumer, ArchiveReader
from training.service.confirmations import AlertHistory, ConfirmationStore, format_time, parse_time

log = logging.getLogger(__name__)

normal_app = typer.Typer(
    help="Confirm audio ranges as normal (retraining learns from them), list, revoke.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(
    help="Model versions: list, show, promote, roll back, sign.", no_args_is_help=True, add_completion=False
)
archive_app = typer.Typer(
    help="The raw-audio archive that retraining reads.", no_args_is_help=True, add_completion=False
)

ArchiveRoot = Annotated[
    Path | None,
    typer.Option("--archive-root", help="archive folder (default: SOUNDWATCH_ARCHIVE__ROOT or var/archive)"),
]
RegistryRoot = Annotated[
    Path | None, typer.Option("--registry", help="model registry root (default: settings registry_root)")
]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def _settings(registry: Path | None = None) -> Settings:
    s = get_settings()
    return s.model_copy(update={"registry_root": registry}) if registry is not None else s


def _archive_config(root: Path | None, **extra: Any) -> ArchiveSettings:
    update = {k: v for k, v in {"root": root, **extra}.items() if v is not None}
    return get_settings().archive.model_copy(update=update)


def _registry(settings: Settings):  # -> ModelRegistry
    from soundwatch.model.registry import ModelRegistry  # deferred: loads torch

    return ModelRegistry.from_settings(settings)


def _resolve_machine(
    machine: str, machine_type: str | None, settings: Settings, archive_root: Path | None
) -> tuple[str, str]:
    """``TYPE/ID``; or ``ID`` with --machine-type; or an ``ID`` that one archived/known machine type has."""
    if "/" in machine:
        mtype, mid = machine.split("/", 1)
        return mtype, mid
    if machine_type:
        return machine_type, machine
    candidates: set[tuple[str, str]] = set()
    cfg = _archive_config(archive_root)
    if (Path(cfg.root) / "index.sqlite3").is_file():
        reader = ArchiveReader(cfg.root)
        try:
            candidates |= {m for m in reader.machines() if m[1] == machine}
        finally:
            reader.close()
    reg = _registry(settings)
    from soundwatch.model.registry import ArtifactError  # deferred: loads torch

    for mtype in reg.machine_types():
        try:
            meta = _metadata(reg, mtype, reg.latest_version(mtype))
        except ArtifactError as exc:  # a broken model must not hide the archive's answer
            log.warning("%s", exc.message)
            continue
        if meta is not None and machine in meta.machine_ids:
            candidates.add((mtype, machine))
    if len(candidates) == 1:
        return candidates.pop()
    if not candidates:
        raise BadInput(
            f"machine {machine!r} is unknown (not in the archive nor in any model)",
            "write it as TYPE/ID or add --machine-type",
        )
    raise BadInput(
        f"machine id {machine!r} exists for several types",
        "write it as one of: " + ", ".join(f"{t}/{i}" for t, i in sorted(candidates)),
    )


# ---------------------------------------------------------------------------- normal
@normal_app.command("confirm")
def normal_confirm(
    machine: Annotated[
        str, typer.Option("--machine", "-m", help="TYPE/ID, or ID (with --machine-type or when only one type has it)")
    ],
    t_from: Annotated[str, typer.Option("--from", help="start: ISO-8601, -2h, now, epoch seconds")],
    t_to: Annotated[str, typer.Option("--to", help="end: ISO-8601, -10m, now, epoch seconds")],
    by: Annotated[str | None, typer.Option("--by", help="who confirms (default: $SOUNDWATCH_USER or login)")] = None,
    note: Annotated[str, typer.Option("--note", help="why this audio is normal")] = "",
    force: Annotated[
        bool, typer.Option("--force", help="confirm even though the range overlaps alerts (recorded as forced)")
    ] = False,
    machine_type: Annotated[str | None, typer.Option("--machine-type", help="type of a bare --machine ID")] = None,
    archive_root: ArchiveRoot = None,
    as_json: AsJson = False,
) -> None:
    """Confirm that a machine sounded normal from --from to --to. Overlapping an alert needs --force."""
    settings = _settings()
    mtype, mid = _resolve_machine(machine, machine_type, settings, archive_root)
    now = time.time_ns()  # one "now" for both ends, so "-2h".."-1h" is exactly one hour
    iv = ConfirmationStore(settings.redis).confirm(
        mtype,
        mid,
        parse_time(t_from, now),
        parse_time(t_to, now),
        by=by,
        note=note,
        force=force,
        alerts=AlertHistory(settings),
        now_ns=now,
    )
    if as_json:
        typer.echo(json.dumps(iv.as_json()))
        return
    forced = f" [yellow]FORCED over {len(iv.alerts)} alert(s)[/yellow]" if iv.forced else ""
    err_console.print(
        f"confirmed #{iv.id}: {iv.machine} {format_time(iv.from_ns)} .. {format_time(iv.to_ns)} "
        f"({iv.duration_s:.0f} s) by {iv.by}{forced}",
        highlight=False,
    )


@normal_app.command("list")
def normal_list(
    machine: Annotated[str | None, typer.Option("--machine", "-m", help="TYPE/ID or ID")] = None,
    machine_type: Annotated[str | None, typer.Option("--machine-type", help="only this machine type")] = None,
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked intervals")] = False,
    archive_root: ArchiveRoot = None,
    as_json: AsJson = False,
) -> None:
    """List confirmed-normal intervals, oldest first."""
    settings = _settings()
    mtype, mid = (None, None)
    if machine:
        mtype, mid = _resolve_machine(machine, machine_type, settings, archive_root)
    elif machine_type:
        mtype = machine_type
    items = ConfirmationStore(settings.redis).intervals(mtype, mid, include_revoked=include_revoked)
    if as_json:
        typer.echo(json.dumps([iv.as_json() for iv in items]))
        return
    if not items:
        err_console.print("no confirmed-normal intervals")
    for iv in items:
        flags = (" FORCED" if iv.forced else "") + (f" REVOKED by {iv.revoked_by}" if iv.revoked else "")
        typer.echo(
            f"#{iv.id:<5} {iv.machine:<24} {format_time(iv.from_ns)} .. {format_time(iv.to_ns)} "
            f"{iv.duration_s:>8.0f} s  by {iv.by}{flags}  {iv.note}"
        )


@normal_app.command("revoke")
def normal_revoke(
    interval_id: Annotated[int, typer.Argument(help="interval number from `soundwatch normal list`")],
    by: Annotated[str | None, typer.Option("--by", help="who revokes")] = None,
    note: Annotated[str, typer.Option("--note", help="why")] = "",
    as_json: AsJson = False,
) -> None:
    """Revoke a confirmation (kept in the audit trail; future retraining ignores it)."""
    iv = ConfirmationStore(_settings().redis).revoke(interval_id, by=by, note=note)
    if as_json:
        typer.echo(json.dumps(iv.as_json()))
        return
    err_console.print(f"revoked #{iv.id} ({iv.machine}) by {iv.revoked_by}")


@normal_app.command("audit")
def normal_audit(
    count: Annotated[int, typer.Option("--count", min=1, help="most entries to show")] = 1000,
    as_json: AsJson = False,
) -> None:
    """The append-only trail of every confirm and revoke."""
    entries = ConfirmationStore(_settings().redis).audit(count)
    if as_json:
        typer.echo(json.dumps(entries))
        return
    for e in entries:
        forced = " FORCED" if e.get("forced") == "1" else ""
        typer.echo(
            f"{format_time(int(e['at_ns']))} {e['action']:<8} #{e['interval']:<5} {e['machine']:<24} "
            f"by {e['by']}{forced}  {e.get('note', '')}"
        )


# ---------------------------------------------------------------------------- models
def _metadata(registry, machine_type: str, version: str | None) -> ArtifactMetadata | None:  # noqa: ANN001
    """A version's verified metadata (None for no version); ArtifactError when it fails a check."""
    return None if version is None else registry.metadata(machine_type, version)


def _current_or_none(registry, machine_type: str) -> str | None:  # noqa: ANN001
    try:
        return registry.current_version(machine_type)
    except ServiceUnavailable as exc:
        log.warning("%s", exc.message)
        return None


def _gate_text(meta: ArtifactMetadata | None) -> str:
    gate = meta.gate if meta is not None else None
    if not gate:
        return "-"
    return "passed" if gate.get("passed") else "REFUSED"


@models_app.command("list")
def models_list(
    machine_type: Annotated[str | None, typer.Option("--machine-type", help="only this type")] = None,
    registry: RegistryRoot = None,
    as_json: AsJson = False,
) -> None:
    """Every version per machine type: current marker, parent, gate result, creation time.

    Each version is verified (checksums, and the signature when a signing key is set); one that fails
    is listed with the reason (`problem`), never loaded.
    """
    from soundwatch.model.registry import ArtifactError  # deferred: loads torch

    reg = _registry(_settings(registry))
    rows = []
    for mtype in [machine_type] if machine_type else reg.machine_types():
        current = _current_or_none(reg, mtype)
        for v in reg.versions(mtype):
            try:
                meta, problem = _metadata(reg, mtype, v), None
            except ArtifactError as exc:
                meta, problem = None, exc.message
            rows.append(
                {
                    "machine_type": mtype,
                    "version": v,
                    "current": v == current,
                    "parent": meta.parent_version if meta else None,
                    "method": meta.method if meta else None,
                    "created_at": meta.created_at if meta else None,
                    "gate": _gate_text(meta),
                    "data_cutoff": meta.data_cutoff if meta else None,
                    "verified": problem is None,
                    "problem": problem,
                }
            )
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        err_console.print(f"no models under {reg.root}")
    for r in rows:
        mark = "*" if r["current"] else " "
        if r["problem"]:
            typer.echo(f"{mark} {r['machine_type']:<14} {r['version']:<7} REFUSED: {r['problem']}")
            continue
        parent = r["parent"] or "-"
        typer.echo(
            f"{mark} {r['machine_type']:<14} {r['version']:<7} {r['method'] or '':<4} parent={parent:<7} "
            f"gate={r['gate']:<8} created={r['created_at']}  cutoff={r['data_cutoff']}"
        )


@models_app.command("show")
def models_show(
    machine_type: Annotated[str, typer.Argument(help="machine type")],
    version: Annotated[str | None, typer.Argument(help="version (default: current)")] = None,
    registry: RegistryRoot = None,
) -> None:
    """Print a version's verified metadata (JSON): thresholds, data summary, metrics, gate decision and reasons."""
    reg = _registry(_settings(registry))
    version = reg.resolve_version(machine_type, version)
    meta = _metadata(reg, machine_type, version)
    verified_by = f"signature (key id {reg.signer.key_id})" if reg.signer else "checksums (no signing key configured)"
    shown = {
        **(meta.to_dict() if meta else {}),
        "current": _current_or_none(reg, machine_type) == version,
        "verified_by": verified_by,
    }
    typer.echo(json.dumps(shown, indent=2, default=str))


@models_app.command("promote")
def models_promote(
    machine_type: Annotated[str, typer.Argument(help="machine type")],
    version: Annotated[str, typer.Argument(help="version to make current")],
    force: Annotated[bool, typer.Option("--force", help="promote even though its gate refused it")] = False,
    registry: RegistryRoot = None,
) -> None:
    """Make a version current (Redis + reload message to the scoring workers)."""
    reg = _registry(_settings(registry))
    meta = _metadata(reg, machine_type, version)
    gate = meta.gate if meta is not None else None
    if gate and not gate.get("passed") and not force:
        raise BadInput(
            f"{machine_type} {version} was refused by the promotion gate: " + "; ".join(gate["reasons"]),
            "pass --force to promote it anyway",
        )
    reg.set_current(machine_type, version)
    err_console.print(f"{machine_type}: {version} is current; scoring workers reload it")


@models_app.command("rollback")
def models_rollback(
    machine_type: Annotated[str, typer.Argument(help="machine type")],
    to: Annotated[
        str | None, typer.Option("--to", help="version to return to (default: the current version's parent)")
    ] = None,
    registry: RegistryRoot = None,
) -> None:
    """Return to an earlier version (default: the parent of the current one)."""
    reg = _registry(_settings(registry))
    current = reg.resolve_version(machine_type)
    target = to or reg.metadata(machine_type, current).parent_version
    if not target:
        raise BadInput(
            f"{machine_type} {current} has no parent version to roll back to",
            "name one with --to VERSION (see `soundwatch models list`)",
        )
    reg.set_current(machine_type, target)  # checks the name and verifies the artifact first
    err_console.print(f"{machine_type}: rolled back {current} -> {target}; scoring workers reload it")


def _read_key_file(path: Path) -> str:
    key = path.read_text().strip()
    if len(key) < MIN_SIGNING_KEY_CHARS:
        raise BadInput(
            f"{path} holds no key of at least {MIN_SIGNING_KEY_CHARS} characters",
            "put the previous registry_signing_key in the file, on one line",
        )
    return key


@models_app.command("sign")
def models_sign(
    machine_type: Annotated[str | None, typer.Option("--machine-type", help="only this type")] = None,
    previous_key_file: Annotated[
        Path | None,
        typer.Option(
            "--previous-key-file",
            exists=True,
            dir_okay=False,
            help="key rotation: a file holding the key the registry is signed with now; its signatures "
            "are verified before the new key's are added",
        ),
    ] = None,
    registry: RegistryRoot = None,
    as_json: AsJson = False,
) -> None:
    """Sign every version with registry_signing_key after verifying it; refuse tampered ones (exit 6).

    Migration (the registry was saved without a key): an unsigned version is signed when its checksums
    verify. Key rotation: run with the NEW key and --previous-key-file OLD; a version signed with the
    old key is verified with it, then the new signature is added (the old one stays, so workers that
    still hold the old key keep loading); then give every worker and the retrain job the new key.
    """
    from soundwatch.model.registry import ArtifactSigner  # deferred: loads torch

    settings = _settings(registry)
    if settings.registry_signing_key is None:
        raise ConfigError(
            "no registry signing key is configured, so there is nothing to sign with",
            "set SOUNDWATCH_REGISTRY_SIGNING_KEY (generate one with `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`) and give the same key to every worker",
        )
    previous = [ArtifactSigner(_read_key_file(previous_key_file))] if previous_key_file else []
    reg = _registry(settings)
    rows = reg.sign_all(machine_type, previous)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {"machine_type": t, "version": v, "outcome": o, "problem": e.message if e else None}
                    for t, v, o, e in rows
                ]
            )
        )
    else:
        for t, v, outcome, exc in rows:
            colour = "red" if exc else "green"
            detail = f": {exc.message}" if exc else ""
            err_console.print(f"[{colour}]{t} {v}: {outcome}[/{colour}]{escape(detail)}", highlight=False)
    counts = {o: sum(1 for r in rows if r[2] == o) for o in ("signed", "re-signed", "already signed", "refused")}
    err_console.print(
        f"{reg.root}: " + ", ".join(f"{n} {o}" for o, n in counts.items()) + f" (key id {reg.signer.key_id})"
    )
    refused = [(t, v, e) for t, v, _, e in rows if e is not None]
    if refused:
        raise BadInput(
            f"{len(refused)} version(s) not signed with this key (workers with it refuse them): "
            + ", ".join(f"{t} {v}" for t, v, _ in refused),
            "signed with another key: pass that key with --previous-key-file; failed a check "
            "(see above): retrain, or restore the version from backup",
        )


# ---------------------------------------------------------------------------- retrain
def retrain(
    machine_type: Annotated[
        str | None, typer.Option("--machine-type", help="one machine type (default: every type with a model)")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="run one round and exit")] = False,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="cron expression, e.g. '0 3 * * *'; runs until stopped")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="original training data (DCASE layout): replay, earlier validation set, labelled test clips"
        ),
    ] = None,
    archive_root: ArchiveRoot = None,
    registry: RegistryRoot = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="fine-tuning epochs")] = None,
    encoder_update: Annotated[
        str | None,
        typer.Option(
            "--encoder-update",
            help="encoder methods (clp, ...): bank = keep the weights, add the confirmed audio to the kNN bank "
            "(default, cannot forget); head = fine-tune the projection + ID head, conv trunk frozen; "
            "full = fine-tune everything. ae always fine-tunes. Default: settings retrain.encoder_update",
        ),
    ] = None,
    min_seconds: Annotated[
        float | None, typer.Option("--min-seconds", min=0, help="least new confirmed audio for a round")
    ] = None,
    device: Annotated[Device | None, typer.Option("--device", help="where to fine-tune")] = None,
    far_tolerance: Annotated[
        float | None,
        typer.Option(
            "--far-tolerance", min=0, help="gate: candidate false-alarm rate may exceed the current model's by this"
        ),
    ] = None,
    auc_tolerance: Annotated[
        float | None, typer.Option("--auc-tolerance", min=0, help="gate: candidate AUC may be lower by this")
    ] = None,
    pauc_tolerance: Annotated[
        float | None, typer.Option("--pauc-tolerance", min=0, help="gate: candidate pAUC may be lower by this")
    ] = None,
    far_target: Annotated[
        float | None,
        typer.Option(
            "--far-target", min=0, max=1, help="gate: candidate false-alarm rate on confirmed audio must be <= this"
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Fine-tune on confirmed-normal audio since the model's data cutoff; promote only past the gate.

    Defaults come from settings [retrain] (env SOUNDWATCH_RETRAIN__<FIELD>, e.g.
    SOUNDWATCH_RETRAIN__GATE__FAR_TOLERANCE); flags win.
    """
    from training.service.retrain import retrain_round, run_schedule  # deferred: loads scipy, sklearn, torch

    if once == (schedule is not None):
        raise ConfigError("pass exactly one of --once or --schedule CRON", "e.g. `soundwatch retrain --once`")
    from training.methods.base import ENCODER_MODES  # deferred: loads torch

    if encoder_update is not None and encoder_update not in ENCODER_MODES:
        raise ConfigError(
            f"--encoder-update {encoder_update!r} is not one of {', '.join(ENCODER_MODES)}",
            "pass --encoder-update bank|head|full",
        )
    settings = _settings(registry)
    given = {
        "data_root": data,
        "epochs": epochs,
        "min_confirmed_seconds": min_seconds,
        "device": None if device is None else Device(device).value,
        "encoder_update": encoder_update,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    base = settings.retrain
    tolerances = {
        "far_tolerance": far_tolerance,
        "auc_tolerance": auc_tolerance,
        "pauc_tolerance": pauc_tolerance,
        "far_target": far_target,
    }
    gate = base.gate.model_copy(update={k: v for k, v in tolerances.items() if v is not None})
    cfg = base.model_copy(update={**overrides, "gate": gate})
    archive = _archive_config(archive_root)

    def round_() -> list:
        outcomes = retrain_round(settings, machine_type, cfg, archive)
        for o in outcomes:
            if as_json:
                typer.echo(
                    json.dumps(
                        {
                            "machine_type": o.machine_type,
                            "parent_version": o.parent_version,
                            "version": o.version,
                            "promoted": o.promoted,
                            "message": o.message,
                            "gate": o.decision.to_dict() if o.decision else None,
                            "stats": o.stats,
                        },
                        default=str,
                    )
                )
            else:
                colour = "green" if o.promoted else ("yellow" if o.version else "white")
                err_console.print(f"[{colour}]{o.message}[/{colour}]", highlight=False)
        return outcomes

    if once:
        round_()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err_console.print(f"retraining on schedule {schedule!r} (Ctrl-C to stop)")
    run_schedule(schedule, round_, stop)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- archive
@archive_app.command("run")
def archive_run(
    archive_root: ArchiveRoot = None,
    segment_seconds: Annotated[
        float | None, typer.Option("--segment-seconds", min=1, help="audio per FLAC segment")
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="consumer group id")] = None,
    max_age_days: Annotated[float | None, typer.Option("--max-age-days", min=0.01, help="retention by age")] = None,
    max_gb: Annotated[float | None, typer.Option("--max-gb", min=0.001, help="retention by size")] = None,
) -> None:
    """Record audio.raw into rolling FLAC segments until SIGINT/SIGTERM (then flush and commit)."""
    cfg = _archive_config(
        archive_root,
        segment_seconds=segment_seconds,
        group_id=group,
        max_age_s=max_age_days * 86400 if max_age_days else None,
        max_bytes=int(max_gb * 1024**3) if max_gb else None,
    )
    settings = _settings()
    err_console.print(
        f"archiving {settings.kafka.topics.audio_raw} -> {cfg.root} ({cfg.segment_seconds:.0f} s "
        f"segments, group {cfg.group_id})"
    )
    consumer = ArchiveConsumer(settings, cfg)
    consumer.run(install_signals=True)
    err_console.print(
        f"archive stopped: {consumer.chunks} chunks, {consumer.writer.segments_written} segments, "
        f"{consumer.writer.duplicates} duplicates, {consumer.dead_letters} dead letters"
    )


@archive_app.command("list")
def archive_list(archive_root: ArchiveRoot = None, as_json: AsJson = False) -> None:
    """Archived machines with their segment count, time span and size."""
    reader = ArchiveReader(_archive_config(archive_root).root)
    try:
        rows: list[dict[str, Any]] = []
        for mtype, mid in reader.machines():
            segs = reader.index.segments(mtype, mid)
            rows.append(
                {
                    "machine": f"{mtype}/{mid}",
                    "segments": len(segs),
                    "from_ns": segs[0].start_ns,
                    "to_ns": segs[-1].end_ns,
                    "seconds": sum(s.n_samples / s.sample_rate for s in segs),
                    "bytes": sum(s.n_bytes for s in segs),
                }
            )
    finally:
        reader.close()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(
            f"{r['machine']:<24} {r['segments']:>5} segments {r['seconds']:>9.0f} s "
            f"{format_time(r['from_ns'])} .. {format_time(r['to_ns'])} {r['bytes'] / 1e6:8.1f} MB"
        )


__all__ = ["archive_app", "models_app", "normal_app", "retrain"]
