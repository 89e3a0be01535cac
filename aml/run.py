"""`aml run` and `aml serve`: the consortium flow on Prefect, once or on a schedule."""

from __future__ import annotations

from pathlib import Path

from aml.errors import BadInputError


def _check_dirs(enclave_dir: Path, inbox: Path, outbox: Path) -> tuple[str, str, str]:
    if not (enclave_dir / "attestation.json").is_file():
        raise BadInputError(f"'{enclave_dir}' is not an initialised enclave directory (run `aml enclave init`)")
    if not inbox.is_dir():
        raise BadInputError(f"inbox '{inbox}' is not a directory")
    outbox.mkdir(parents=True, exist_ok=True)
    return str(enclave_dir.resolve()), str(inbox.resolve()), str(outbox.resolve())


def format_summary(summary: dict) -> str:
    """What `aml run` prints: counts, file names and reason codes, never data."""
    lines = []
    if summary.get("run_id"):
        lines.append(
            f"run {summary['run_id']}: {summary['accepted']} batches accepted, {summary['rejected']} rejected, "
            f"{summary['skipped']} skipped (already processed); {summary['rows']} rows "
            f"({summary['rows_quarantined']} rows quarantined); {summary['alerts']} alerts"
        )
        if summary.get("patterns"):
            lines.append("alerts per typology: " + ", ".join(f"{p} {n}" for p, n in sorted(summary["patterns"].items())))
        for bank, path in sorted(summary.get("outbox", {}).items()):
            lines.append(f"  {bank}: {path}")
    else:
        lines.append(
            f"no new batches to process: {summary['rejected']} rejected, {summary['skipped']} skipped (already processed)"
        )
    if summary.get("millis"):
        lines.append("stage durations (ms): " + ", ".join(f"{k} {v}" for k, v in summary["millis"].items()))
    for c in summary.get("batches", []):
        if c["status"] == "rejected":
            lines.append(f"rejected {c['file']}: {c['code']} (moved to quarantine/)")
    return "\n".join(lines)


def run_consortium(enclave_dir: Path, inbox: Path, outbox: Path) -> str:
    """Run the consortium flow once (ephemeral Prefect unless PREFECT_API_URL is set)."""
    args = _check_dirs(Path(enclave_dir), Path(inbox), Path(outbox))
    import aml.prefect_env  # noqa: F401  (before prefect)
    from flows.consortium import consortium_run

    return format_summary(consortium_run(*args))


def build_deployment(enclave_dir: Path, inbox: Path, outbox: Path, cron: str, name: str):
    """The nightly deployment: its parameters are the three directory paths and nothing else."""
    args = _check_dirs(Path(enclave_dir), Path(inbox), Path(outbox))
    import aml.prefect_env  # noqa: F401  (before prefect)
    from flows.consortium import consortium_run

    return consortium_run.to_deployment(
        name=name, cron=cron,
        parameters={"enclave_dir": args[0], "inbox": args[1], "outbox": args[2]},
        description="Nightly consortium run over the sealed batches in the inbox.",
    )


def serve(enclave_dir: Path, inbox: Path, outbox: Path, cron: str, name: str) -> int:
    """Serve the flow as a scheduled deployment (needs a Prefect server: PREFECT_API_URL)."""
    deployment = build_deployment(enclave_dir, inbox, outbox, cron, name)
    from prefect import serve as prefect_serve

    prefect_serve(deployment)
    return 0
