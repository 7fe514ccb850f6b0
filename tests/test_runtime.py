"""Tests of daskparcel.runtime on a real distributed cluster on 127.0.0.1.

The references are dask's own threaded scheduler (for results) and dask-jobqueue / LocalCluster (for
what a configuration starts).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import types
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import yaml

distributed = pytest.importorskip("distributed")

from daskparcel import runtime  # noqa: E402
from daskparcel.errors import InputError  # noqa: E402
from daskparcel.runtime.workers import WORKER_MALLOC  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def small_workload() -> da.Array:
    """A deterministic numpy-heavy graph: standardize blocks of a random array, then a Gram matrix."""
    x = da.random.default_rng(42).standard_normal((600, 40), chunks=(100, 40))
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    return z.T @ z


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=":0",
    ) as c:
        yield c


@pytest.fixture
def no_env_scheduler(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None}):
        yield


def _worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


# ------------------------------------------------------------------------------------------------
# configuration and the local default
# ------------------------------------------------------------------------------------------------


def test_config_section_registered():
    assert dask.config.get("daskparcel.runtime.timeout") == "10s"
    assert dask.config.get("daskparcel.runtime.local") == "threads"


def test_default_scheduler_is_threads_with_reason():
    choice = runtime.default_scheduler()
    assert choice.scheduler == "threads"
    assert choice.threads_per_worker == (os.cpu_count() or 1)
    assert "GIL" in choice.reason


def test_default_scheduler_follows_config():
    with dask.config.set(
        {"daskparcel.runtime.local": "processes", "daskparcel.runtime.local-workers": 3}
    ):
        choice = runtime.default_scheduler()
    assert (choice.scheduler, choice.n_workers, choice.threads_per_worker) == ("processes", 3, 1)
    with (
        dask.config.set({"daskparcel.runtime.local": "gpu"}),
        pytest.raises(InputError, match=r"daskparcel\.runtime\.local='gpu'.*threads"),
    ):
        runtime.default_scheduler()


def test_local_default_uses_threads_and_no_client(no_env_scheduler):
    seen = []

    def record(x):
        seen.append(dask.config.get("scheduler"))
        return x

    with runtime.connect() as client:
        assert client is None
        result = small_workload().map_blocks(record).compute()
    assert seen and set(seen) == {"threads"}
    np.testing.assert_allclose(result, small_workload().compute(scheduler="sync"))


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_local_threads_limit_blas_threads_and_restore(no_env_scheduler):
    pytest.importorskip("threadpoolctl")
    before = _blas_threads()
    if not before:
        pytest.skip("no BLAS thread pool found by threadpoolctl")
    with runtime.connect():
        assert _blas_threads() == {1}
    assert _blas_threads() == before
    with dask.config.set({"daskparcel.runtime.blas-threads": None}), runtime.connect():
        assert _blas_threads() == before
    with (
        dask.config.set({"daskparcel.runtime.blas-threads": 0}),
        pytest.raises(InputError, match=r"blas-threads=0"),
    ):
        runtime.default_scheduler()


def test_local_processes_starts_cluster_and_reports_dashboard(no_env_scheduler, caplog):
    config = {
        "daskparcel.runtime.local": "processes",
        "daskparcel.runtime.local-workers": 2,
        "daskparcel.runtime.dashboard-address": ":0",
    }
    caplog.set_level(logging.INFO, logger="daskparcel.runtime")
    with dask.config.set(config), runtime.Runtime() as rt:
        assert rt.kind == "processes"
        assert len(rt.client.scheduler_info()["workers"]) == 2
        assert len(_worker_pids(rt.client) - {os.getpid()}) == 2
        # glibc's malloc settings, in the workers' environment from their start (issue 18: distributed's
        # MALLOC_TRIM_THRESHOLD_=65536 alone made a run's reduction 1.5x slower on a worker)
        environ = rt.client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC})
        assert list(environ.values()) == [WORKER_MALLOC] * 2
        result = small_workload().compute()
        link = rt.dashboard_link
    assert link and link.startswith("http://127.0.0.1:")
    assert link in caplog.text
    np.testing.assert_allclose(result, small_workload().compute(scheduler="threads"))


# ------------------------------------------------------------------------------------------------
# a running scheduler
# ------------------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_connect_by_address_matches_local(cluster, no_env_scheduler, caplog):
    expected = small_workload().compute(scheduler="threads")
    caplog.set_level(logging.INFO, logger="daskparcel.runtime")
    with runtime.connect(cluster.scheduler_address) as client:
        assert client.scheduler.address == cluster.scheduler_address
        # the work really runs in the two worker processes, not here
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        result = small_workload().compute()
        # every task ran in a worker process of that cluster
        task_pids = da.ones((4, 1), chunks=1).map_blocks(lambda b: b * os.getpid()).compute()
    assert set(task_pids.ravel().astype(int)) <= pids
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert cluster.dashboard_link.split(":")[-1].split("/")[0] in caplog.text
    assert client.status == "closed"  # our client is closed; the cluster is not
    assert len(cluster.scheduler_info["workers"]) == 2


@pytest.mark.cluster
def test_dask_scheduler_address_env_is_honoured(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    rt = runtime.Runtime()
    assert rt.kind == "address"
    with rt:
        assert rt.client.scheduler.address == cluster.scheduler_address
        result = small_workload().compute()
    np.testing.assert_allclose(result, small_workload().compute(scheduler="threads"), rtol=1e-12)


@pytest.mark.cluster
def test_given_client_used_as_is_and_left_open(cluster, no_env_scheduler):
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        with runtime.connect(client) as got:
            assert got is client
            result = small_workload().compute()
        assert client.status == "running"
        assert client.submit(lambda: 1).result() == 1
    np.testing.assert_allclose(result, small_workload().compute(scheduler="threads"), rtol=1e-12)


@pytest.mark.cluster
def test_current_client_is_used_by_default(cluster, no_env_scheduler):
    with distributed.Client(cluster.scheduler_address) as client:
        rt = runtime.Runtime()
        assert rt.kind == "client"
        with rt:
            assert rt.client is client
        assert client.status == "running"


def test_unreachable_scheduler_raises_input_error_quickly(no_env_scheduler):
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(InputError) as info, runtime.connect(address, timeout="2s"):
        pytest.fail("connected to a port nobody listens on")
    elapsed = time.perf_counter() - start
    assert elapsed < 15
    message = str(info.value)
    assert address in message and "could not connect within 2 s" in message
    assert "dask scheduler" in message and "timeout" in message


def test_unreachable_env_address_says_where_it_came_from(monkeypatch):
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with (
        pytest.raises(InputError, match=r"from DASK_SCHEDULER_ADDRESS"),
        runtime.connect(timeout=1),
    ):
        pass


def test_timeout_default_comes_from_config():
    with dask.config.set({"daskparcel.runtime.timeout": "3s"}):
        assert runtime.Runtime("tcp://127.0.0.1:1").timeout == 3.0
    with pytest.raises(InputError, match=r"timeout='soon'"):
        runtime.Runtime("tcp://127.0.0.1:1", timeout="soon")


def test_bad_where_is_refused():
    with pytest.raises(InputError, match=r"where=42: must be None"):
        runtime.Runtime(42)
    with pytest.raises(InputError, match=r"no-such-cluster\.yaml: no such file"):
        runtime.Runtime("no-such-cluster.yaml")


# ------------------------------------------------------------------------------------------------
# cluster configuration files
# ------------------------------------------------------------------------------------------------


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"kind": "slurm", "cores": 4, "memory": "8GiB", "core": 4}))
    with pytest.raises(InputError) as info:
        runtime.load_cluster_config(path)
    message = str(info.value)
    assert "unknown key 'core'" in message and str(path) in message
    assert "did you mean 'cores'" in message
    # the same through connect, before anything starts
    with pytest.raises(InputError, match="unknown key 'core'"):
        runtime.Runtime(path)


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ({"cores": 4}, "missing key 'kind'"),
        ({"kind": "lsf"}, r"kind='lsf' is not supported"),
        ({"kind": "slurm", "cores": 4}, r"needs 'memory'"),
        ({"kind": "slurm", "cores": 0, "memory": "8GiB"}, r"cores=0 must be an integer >= 1"),
        ({"kind": "slurm", "cores": 4, "memory": "lots"}, r"memory='lots' must be a memory size"),
        ({"kind": "slurm", "cores": 4, "memory": "8GiB", "walltime": 2}, r"walltime=2 must be"),
        ({"kind": "pbs", "cores": 4, "memory": "8GiB", "job_cpu": 4}, r"unknown key 'job_cpu'"),
        ({"kind": "local", "adapt": {"minimum": 3, "maximum": 1}}, r"0 <= minimum <= maximum"),
        ({"kind": "local", "adapt": {"min": 1, "maximum": 2}}, r"unknown key 'min'.*'minimum'"),
        ({"kind": "local", "adapt": {"maximum": 2}, "scale": 2}, r"either 'adapt' or 'scale'"),
        ({"kind": "local", "scale": -1}, r"scale=-1 must be an integer >= 0"),
        ({"kind": "kubernetes", "name": "x"}, r"needs 'image'"),
        (
            {"kind": "kubernetes", "name": "x", "image": "i", "resources": {"cpu": "1"}},
            r"unknown field 'cpu'",
        ),
    ],
)
def test_bad_cluster_config(doc, pattern):
    with pytest.raises(InputError, match=pattern):
        runtime.load_cluster_config(doc)


def test_named_configurations(tmp_path):
    path = tmp_path / "clusters.yaml"
    doc = {
        "clusters": {
            "small": {"kind": "local", "n_workers": 1},
            "big": {"kind": "slurm", "cores": 8, "memory": "32GiB", "adapt": {"maximum": 10}},
        },
        "default": "small",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert runtime.load_cluster_config(path).options == {"n_workers": 1}
    big = runtime.load_cluster_config(f"{path}#big")
    assert (big.kind, big.adapt, big.source) == ("slurm", (0, 10), f"{path}#big")
    with pytest.raises(InputError, match=r"no configuration named 'huge'; available: small, big"):
        runtime.load_cluster_config(path, name="huge")
    del doc["default"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(InputError, match=r"holds several configurations"):
        runtime.load_cluster_config(path)


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("kind: slurm\ncores: [4\n")
    with pytest.raises(InputError, match=r"broken\.yaml: not valid YAML"):
        runtime.load_cluster_config(path)


@pytest.mark.cluster
def test_local_cluster_file_starts_and_closes(tmp_path, caplog):
    path = tmp_path / "local.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "local",
                "n_workers": 2,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": ":0",
            }
        )
    )
    caplog.set_level(logging.INFO, logger="daskparcel.runtime")
    with runtime.Runtime(str(path)) as rt:
        assert rt.kind == "cluster"
        assert rt.cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert len(rt.client.scheduler_info()["workers"]) == 2
        environ = rt.client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC})
        assert list(environ.values()) == [WORKER_MALLOC] * 2
        result = small_workload().compute()
        cluster = rt.cluster
    assert rt.dashboard_link in caplog.text
    assert cluster.status.name == "closed"
    np.testing.assert_allclose(result, small_workload().compute(scheduler="threads"), rtol=1e-12)


@pytest.mark.cluster
def test_local_cluster_adapt_from_dict():
    config = {
        "kind": "local",
        "processes": False,
        "dashboard_address": ":0",
        "adapt": {"minimum": 1, "maximum": 2},
    }
    with runtime.connect(config) as client:
        client.wait_for_workers(1, timeout=20)
        assert 1 <= len(client.scheduler_info()["workers"]) <= 2
        result = small_workload().compute()
    np.testing.assert_allclose(result, small_workload().compute(scheduler="threads"), rtol=1e-12)


def test_slurm_without_dask_jobqueue_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # makes `import dask_jobqueue` fail
    config = {"kind": "slurm", "cores": 4, "memory": "8GiB"}
    with pytest.raises(InputError) as info:
        runtime.Runtime(config)
    assert 'pip install "daskparcel[slurm]"' in str(info.value)
    assert "dask_jobqueue" in str(info.value)
    with pytest.raises(InputError, match=r"daskparcel\[slurm\]"):
        runtime.make_cluster(config)


def test_kubernetes_without_dask_kubernetes_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    with pytest.raises(InputError) as info:
        runtime.Runtime(DEPLOY / "kubernetes" / "cluster.yaml")
    assert 'pip install "daskparcel[kubernetes]"' in str(info.value)


def test_kubernetes_config_maps_to_kubecluster(monkeypatch):
    """The deploy/ example reaches KubeCluster with its keys, then adapt (a stand-in records calls)."""
    calls: list[tuple[str, object]] = []

    class FakeKubeCluster:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def adapt(self, **kwargs):
            calls.append(("adapt", kwargs))

        def scale(self, n):
            calls.append(("scale", n))

        def close(self):
            calls.append(("close", None))

    package = types.ModuleType("dask_kubernetes")
    operator = types.ModuleType("dask_kubernetes.operator")
    operator.KubeCluster = FakeKubeCluster  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_kubernetes", package)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", operator)

    path = DEPLOY / "kubernetes" / "cluster.yaml"
    doc = yaml.safe_load(path.read_text())
    cluster = runtime.make_cluster(path)
    assert isinstance(cluster, FakeKubeCluster)
    (_, kwargs), (_, adapt) = calls
    expected = {k: v for k, v in doc.items() if k not in ("kind", "adapt", "scale")}
    # the pods also get glibc's malloc settings for the workers; the file's own env is kept and wins
    expected["env"] = {**WORKER_MALLOC, **doc["env"]}
    assert kwargs == expected
    assert kwargs["image"] and kwargs["resources"]["limits"]["memory"]
    assert adapt == doc["adapt"]


# ------------------------------------------------------------------------------------------------
# faults
# ------------------------------------------------------------------------------------------------


def _slow_identity(block: np.ndarray) -> np.ndarray:
    time.sleep(0.15)
    return block


@pytest.mark.cluster
def test_worker_sigkill_mid_computation_gives_identical_result(no_env_scheduler):
    x = da.random.default_rng(7).standard_normal((2400, 30), chunks=(100, 30))
    graph = (x.map_blocks(_slow_identity) ** 2).sum(axis=0)
    expected = graph.compute(scheduler="threads")
    with (
        distributed.LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        runtime.connect(cluster.scheduler_address) as client,
    ):
        pids = client.run(os.getpid)
        future = client.compute(graph)
        # wait until work is under way but not finished, then kill one worker outright
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = client.run_on_scheduler(
                lambda dask_scheduler: sum(
                    ts.state == "memory" for ts in dask_scheduler.tasks.values()
                )
            )
            if done >= 4:
                break
            time.sleep(0.05)
        assert not future.done()
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        result = future.result(timeout=60)
        # the nanny brought a new worker process back
        client.wait_for_workers(2, timeout=30)
        assert victim not in set(client.run(os.getpid).values())
    np.testing.assert_array_equal(result, expected)


def test_job_script_only_for_batch_kinds():
    with pytest.raises(InputError, match=r"kind 'local' has no batch job script"):
        runtime.job_script({"kind": "local"})


def test_host_port_without_scheme_is_an_address():
    assert runtime.Runtime("localhost:8786").kind == "address"
    assert runtime.Runtime("tls://sched.example.org:8786").kind == "address"
