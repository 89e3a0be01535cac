"""`aml serve` registers a nightly deployment whose parameters are references only."""

from pathlib import Path

import pytest

from aml.core.errors import BadInputError
from aml.operator.run import build_deployment


def _enclave(tmp_path: Path) -> Path:
    enclave = tmp_path / "enclave"
    enclave.mkdir()
    (enclave / "attestation.json").write_text("{}")
    (tmp_path / "inbox").mkdir()
    return enclave


def test_deployment_has_the_cron_schedule_and_only_paths_as_parameters(tmp_path):
    enclave = _enclave(tmp_path)
    dep = build_deployment(enclave, tmp_path / "inbox", tmp_path / "outbox", cron="0 2 * * *", name="nightly")
    assert dep.name == "nightly"
    assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
    assert dep.parameters == {
        "enclave_dir": str(enclave.resolve()),
        "inbox": str((tmp_path / "inbox").resolve()),
        "outbox": str((tmp_path / "outbox").resolve()),
    }


def test_serve_refuses_an_uninitialised_enclave(tmp_path):
    (tmp_path / "inbox").mkdir()
    with pytest.raises(BadInputError, match="not an initialised enclave"):
        build_deployment(tmp_path / "nothing", tmp_path / "inbox", tmp_path / "outbox", cron="0 2 * * *", name="n")
