"""What a user sees while a fit runs (issue 20, item 11): the dashboard of a cluster serves, and every
computation of a fit gets a progress bar labelled with its step, on the local schedulers and on a distributed
client (the scheduler's progress plugin, as ``distributed.progress``); without a terminal, timed lines."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import dask
import numpy as np
import pytest
from conftest import real_scan

import daskparcel as dp
from daskparcel import runtime
from daskparcel._log import progress_bars

distributed = pytest.importorskip("distributed")

STEPS = ("mask", "signals", "reduction")
BAR = r"\r{step}: \[#+ *\] 100% \| (?:(\d+)/(\d+) tasks \| )?[0-9.]+ \w+\n"


@pytest.fixture
def no_env_scheduler(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None}):
        yield


@pytest.mark.cluster
def test_dashboard_of_a_started_cluster_serves_its_status_page(no_env_scheduler):
    """The link logged when the CLI / estimator start a local cluster answers over loopback with the dask
    dashboard of that very scheduler."""
    settings = {
        "daskparcel.runtime.local": "processes",
        "daskparcel.runtime.local-workers": 1,
        "daskparcel.runtime.dashboard-address": ":0",
    }
    with dask.config.set(settings), runtime.Runtime() as rt:
        link = rt.dashboard_link
        assert (
            link is not None and link.startswith("http://127.0.0.1:") and link.endswith("/status")
        )
        with urllib.request.urlopen(link, timeout=30) as response:
            status, kind, page = response.status, response.headers["Content-Type"], response.read()
        base = link.removesuffix("/status")
        with urllib.request.urlopen(f"{base}/json/identity.json", timeout=30) as response:
            identity = json.load(response)
        scheduler_id = rt.client.scheduler_info()["id"]
    assert status == 200 and kind.startswith("text/html")
    assert b"<title>Dask Diagnostic UI</title>" in page and b"bokeh" in page
    assert identity["id"] == scheduler_id  # served by the scheduler we started, not another one


def _fit(client, store: Path) -> dp.Parcellations:
    return dp.Parcellations(
        method="ward", n_parcels=20, n_components=10, mask_strategy="background",
        store=store, client=client,
    ).fit(str(real_scan("nitime1")))  # fmt: skip


def _bars(text: str, step: str) -> list[tuple[str, str]]:
    return re.findall(BAR.format(step=step), text)


@pytest.mark.cluster
def test_fit_on_a_distributed_client_draws_a_labelled_bar_per_computation(tmp_path):
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        plain = _fit(client, tmp_path / "plain")
        out = io.StringIO()
        with progress_bars(out=out):
            barred = _fit(client, tmp_path / "bars")
    text = out.getvalue()
    for step in STEPS:
        bars = _bars(text, step)
        assert bars, f"no finished bar labelled {step!r} in {text!r}"
        # the scheduler's own count of the tasks: all of them done
        assert all(done == total and int(total) > 0 for done, total in bars), bars
    np.testing.assert_array_equal(barred.labels_.values, plain.labels_.values)


def test_fit_on_the_local_scheduler_draws_a_labelled_bar_per_computation(tmp_path):
    out = io.StringIO()
    with progress_bars(out=out):
        _fit(None, tmp_path / "cache")
    text = out.getvalue()
    for step in STEPS:
        assert _bars(text, step), f"no finished bar labelled {step!r} in {text!r}"
    assert "Completed" not in text  # dask's unlabelled bar is not drawn as well
    # no bars outside the block, nor when disabled
    out = io.StringIO()
    with progress_bars(False, out=out):
        _fit(None, tmp_path / "cache2")
    assert out.getvalue() == ""


def _cluster_file(tmp_path: Path) -> Path:
    cluster = tmp_path / "local.yaml"
    cluster.write_text(
        "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\nhost: 127.0.0.1\n"
        'dashboard_address: ":0"\n'
    )
    return cluster


def _cli_fit(tmp_path: Path, name: str, terminal: bool) -> str:
    """stderr of ``daskparcel fit`` on a local cluster file, on a pseudo-terminal or a pipe."""
    return _cli(
        ["fit", str(real_scan("nitime1")), "--method", "ward", "--n-parcels", "20", "--n-components",
         "10", "--mask-strategy", "background", "--cluster", str(_cluster_file(tmp_path)), "--out",
         str(tmp_path / name)],
        terminal,
    )  # fmt: skip


def _cli(cli_args: list[str], terminal: bool) -> str:
    """stderr of ``daskparcel ARGS``, on a pseudo-terminal or a pipe."""
    args = [sys.executable, "-m", "daskparcel.cli", *cli_args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if not terminal:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=follower, env=env)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.cluster
@pytest.mark.slow
def test_cli_fit_on_a_cluster_shows_labelled_bars_on_a_terminal_timed_lines_otherwise(tmp_path):
    shown = _cli_fit(tmp_path, "tty", terminal=True)
    for step in STEPS:
        bars = _bars(shown, step)
        assert bars and all(done == total for done, total in bars), shown
    # between the bars: the dashboard link, each step's timed line, what the in-memory clustering does
    assert re.search(r"^dask dashboard \(.+\): http://127\.0\.0\.1:\d+/status$", shown, re.M), shown
    for step in (*STEPS, "clustering"):
        assert re.search(rf"^{step}: \d+\.\d s", shown, re.M), shown
    assert re.search(r"^ward: clustering \d+ voxels into 20 parcels$", shown, re.M), shown
    assert "daskparcel.estimator INFO" not in shown  # plain lines, once each
    # the outputs' computations are labelled too (after the fit, on the local scheduler)
    assert _bars(shown, "outputs") and "\rdask:" not in shown, shown
    transformed = _cli(
        ["transform", str(real_scan("nitime1")), "--labels", str(tmp_path / "tty"), "--out",
         str(tmp_path / "signals.zarr")],
        terminal=True,
    )  # fmt: skip
    assert _bars(transformed, "transform") and "\rdask:" not in transformed, transformed
    logged = _cli_fit(tmp_path, "pipe", terminal=False)
    assert "\r" not in logged and "[#" not in logged
    for step in STEPS:
        assert re.search(rf"daskparcel\.estimator INFO: {step}: \d+\.\d s", logged), logged
    assert re.search(r"dask dashboard \(.+\): http://127\.0\.0\.1:\d+/status", logged), logged
