"""What runs on a distributed cluster: the workers a fit records, and in-memory arrays scattered to the workers
instead of shipped inside graphs. A real LocalCluster of worker processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator

import dask
import distributed
import numpy as np
import pytest

from daskparcel import Parcellations, datasets
from daskparcel._dask import from_numpy, shared
from daskparcel.runtime.workers import IdentifyWorkers, describe, workers_seen


@contextlib.contextmanager
def two_workers(n_workers: int = 2) -> Iterator[distributed.Client]:
    """A LocalCluster of single-thread worker processes on 127.0.0.1, and a client that is not the default."""
    with (
        distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def client():
    with two_workers() as client:
        yield client


@pytest.mark.parametrize("chunks", [(1000, -1), (4096, -1), (-1, -1)])
def test_from_numpy_scatters_the_blocks_and_equals_numpy(client, chunks):
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((8192, 300)).astype(
        np.float32
    )  # 9.4 MiB: above the scatter threshold
    with client.as_current(), warnings.catch_warnings():
        warnings.simplefilter("error")  # "Sending large graph" is a UserWarning
        x = from_numpy(arr, chunks=chunks)
        graph_bytes = sum(
            v.nbytes for v in dict(x.__dask_graph__()).values() if isinstance(v, np.ndarray)
        )
        assert graph_bytes == 0  # the graph holds references to the scattered blocks, not the data
        np.testing.assert_array_equal(x.compute(), arr)
        np.testing.assert_allclose(
            x.astype(np.float64).sum(axis=0).compute(), arr.sum(axis=0, dtype=np.float64), rtol=1e-9
        )
        value = shared(arr)
        np.testing.assert_array_equal(dask.delayed(np.asarray)(value).compute(), arr)
    # without a distributed client: a plain dask array of the numpy blocks
    local = from_numpy(arr, chunks=chunks)
    assert any(isinstance(v, np.ndarray) for v in dict(local.__dask_graph__()).values())
    np.testing.assert_array_equal(local.compute(scheduler="threads"), arr)


def test_the_same_array_shared_again_right_after_its_release_is_not_lost():
    """One worker, the same array scattered, dropped and scattered again (hierarchical kmeans does it between
    its two levels; two fits of the same features do it too). Scattered under a key hashed from the data, the
    second copy met the first one's release on the worker ("lost dependencies", 2 fits in 5 on SLURM)."""
    arr = np.arange(400_000, dtype=np.float32)  # 1.5 MiB: above the scatter threshold
    with two_workers(n_workers=1) as one, one.as_current():
        for _ in range(10):
            for _ in range(2):
                value = shared(arr)
                sums = dask.compute(*[dask.delayed(_plus, pure=True)(value, i) for i in range(4)])
                assert sums == tuple(float(arr.sum()) + i for i in range(4))
                del value
            for _ in range(2):
                assert from_numpy(arr, chunks=100_000).sum().compute() == arr.sum()


def _plus(a: np.ndarray, i: int) -> float:
    return float(a.sum()) + i


def test_a_fit_records_its_workers_and_equals_the_local_fit(client, tmp_path):
    run = datasets.synthetic_run(4, 24, n_parcels=8).isel(
        x=slice(14, 30), y=slice(18, 36), z=slice(14, 30)
    )
    params = {"method": "kmeans", "n_parcels": 6, "n_components": 5, "mask_strategy": "background"}
    local = Parcellations(**params, store=tmp_path / "local").fit(run)
    assert local.workers_ == []
    remote = Parcellations(**params, store=tmp_path / "remote", client=client).fit(run)
    np.testing.assert_array_equal(remote.labels_.values, local.labels_.values)
    addresses = set(client.scheduler_info()["workers"])
    assert {w["address"] for w in remote.workers_} == addresses
    assert all(w["threads"] == 1 and w["pid"] > 0 and not w.get("left") for w in remote.workers_)
    assert describe(remote.workers_).startswith("2 workers on ")


def test_a_worker_that_left_is_kept_and_flagged(tmp_path):
    """A worker lost during the fit is still in the record (``left``), its replacement too."""
    with two_workers() as client:
        client.register_plugin(IdentifyWorkers())
        since = time.time()
        first = sorted(client.scheduler_info()["workers"])
        # a worker sends its identity through its batched stream after the plugin's setup returns: killed before
        # that is sent (CI under load), it was never seen; wait until both are
        deadline = time.monotonic() + 30
        while len(workers_seen(client, since)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(Exception):  # the worker dies mid-call; its nanny starts a new one
            client.run(os._exit, 1, workers=first[:1])
        deadline = time.monotonic() + 90  # the plugin runs on a worker that joins later too
        while len(seen := workers_seen(client, since)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first[0] in {w["address"] for w in seen if w.get("left")}
        assert len(seen) == 3
        assert workers_seen(client, time.time() + 1) == [w for w in seen if not w.get("left")]
