"""Partitioned detection on a Dask LocalCluster of enclave workers, through prefect-dask."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aml.core.crypto.keys import write_keypair
from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.pipeline import run_detection
from aml.enclave import runner
from aml.enclave.identity import init_enclave
from aml.enclave.partitioned import DaskPartitionMap, DaskSettings, dask_settings
from aml.core.errors import ConfigError, EnclaveBoundaryError
from aml.tools.synth import generate


def test_settings_default_off_and_parsed_from_the_environment():
    assert dask_settings({}) is None
    assert dask_settings({"AML_DASK_WORKERS": "3"}) == DaskSettings(workers=3, partitions=3)
    assert dask_settings({"AML_DASK_WORKERS": "1"}).partitions == 2
    assert dask_settings({"AML_DASK_WORKERS": "2", "AML_DASK_PARTITIONS": "6"}).partitions == 6
    remote = dask_settings({"AML_DASK_SCHEDULER": "tls://10.0.0.5:8786"})
    assert remote.scheduler == "tls://10.0.0.5:8786" and remote.partitions == 2
    with pytest.raises(ConfigError):
        dask_settings({"AML_DASK_SCHEDULER": "tcp://10.0.0.5:8786"})  # workers are enclaves: TLS
    with pytest.raises(ConfigError):
        dask_settings({"AML_DASK_WORKERS": "two"})


def test_the_dask_runner_refuses_tasks_that_are_not_enclave_tasks():
    from prefect import task

    from aml.enclave.dask_workers import EnclaveDaskTaskRunner

    @task
    def plain(x: int) -> int:
        return x

    with pytest.raises(EnclaveBoundaryError):
        EnclaveDaskTaskRunner().submit(plain, {"x": 1})


def test_partitioned_alerts_on_a_local_cluster_equal_single_process(tmp_path, monkeypatch,
                                                                     prefect_env_vars):
    members = tmp_path / "members"
    members.mkdir()
    write_keypair("B01", members)
    init_enclave(tmp_path / "enclave", members)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    # This process plays the enclave worker that runs detect_and_seal (it holds the keys); the
    # Dask workers become enclave workers through the runner's worker plugin.
    monkeypatch.setitem(runner._WORKER, "inside", True)

    table, _ = generate(banks=3, accounts=200, days=30, seed=3)
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    new = ts >= ts.max() - 7 * 86_400 * 10**6
    label = np.where(new, None, table.column("label").to_numpy(zero_copy_only=False))
    table = table.set_column(table.schema.get_field_index("label"), "label",
                             pa.array(label, pa.int8()))
    config = DetectionConfig.load()
    key = b"\x02" * 32

    single = run_detection(table, config, alert_key=key, placeholder_key=key)
    mapper = DaskPartitionMap(str(tmp_path / "enclave"), str(work), "run-test",
                              DaskSettings(workers=2, partitions=3))
    split = run_detection(table, config, alert_key=key, placeholder_key=key, partitions=3,
                          map_partitions=mapper)

    assert sum(single.counts.values()) > 0
    assert split.counts == single.counts
    for bank in single.banks:
        assert split.alerts_for(bank).equals(single.alerts_for(bank)), bank
    # The sealed partition files were consumed; Dask's scratch space is in the work area.
    assert not any((work / "partitions").iterdir())
    assert (work / "dask").is_dir()
