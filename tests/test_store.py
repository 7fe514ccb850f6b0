"""Stores: exact round trips, cohorts, resume after SIGKILL, locks, refusals that leave the disk as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan

import daskparcel as dp
from daskparcel import datasets
from daskparcel.errors import IncompleteStoreError, InputError, StoreLockedError
from daskparcel.ingest.convert import convert
from daskparcel.store.runs import PROGRESS_NAME, store_info, store_lock


def _tree_snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    ("name", "chunk"), [("nipy", 3), ("nipy", 20), ("pyhrf", 16), ("rapidtide", None)]
)
def test_round_trip_real_scan_exact(tmp_path, name, chunk):
    src = real_scan(name)
    result = convert(src, tmp_path / "run", chunk_volumes=chunk)
    assert result.kind == "run"
    ds = dp.open_store(tmp_path / "run")
    img = nib.load(src)
    np.testing.assert_array_equal(ds["bold"].values, img.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(ds.attrs["affine"]), img.affine)
    assert len(ds.attrs["source_sha256"]) == 64
    assert ds.attrs["run"] == result.runs[0]
    # export back to NIfTI: identical data, affine and the header fields that matter
    for suffix in (".nii", ".nii.gz"):
        out = dp.to_nifti(ds, tmp_path / f"back{suffix}")
        back = nib.load(out)
        np.testing.assert_array_equal(
            back.get_fdata(dtype=np.float32), img.get_fdata(dtype=np.float32)
        )
        np.testing.assert_array_equal(back.affine, img.affine)
        for field in (
            "dim",
            "pixdim",
            "xyzt_units",
            "qform_code",
            "sform_code",
            "srow_x",
            "quatern_b",
        ):
            np.testing.assert_array_equal(back.header[field], img.header[field], err_msg=field)


def test_round_trip_synthetic_2mm_run(tmp_path):
    run = datasets.synthetic_run(2, 24, n_parcels=100)
    src = dp.to_nifti(run, tmp_path / "syn.nii.gz")
    convert(src, tmp_path / "store", chunk_volumes=5)
    ds = dp.open_store(tmp_path / "store")
    assert ds["bold"].shape == (91, 109, 91, 24)
    np.testing.assert_array_equal(ds["bold"].values, run["bold"].values)
    np.testing.assert_array_equal(np.asarray(ds.attrs["affine"]), np.asarray(run.attrs["affine"]))
    assert ds.attrs["t_r"] == pytest.approx(2.0)


def test_open_store_is_lazy(tmp_path):
    convert(real_scan("nipy"), tmp_path / "run", chunk_volumes=4)
    with raise_if_dask_computes():
        ds = dp.open_store(tmp_path / "run")
        ds["bold"].mean("t")
    assert ds["bold"].data.chunks[3] == (4, 4, 4, 4, 4)


def test_cohort_store(tmp_path):
    a, b = real_scan("nitime1"), real_scan("nitime2")
    result = convert([a, b], tmp_path / "cohort", chunk_volumes=16)
    assert result.kind == "cohort"
    assert result.runs == ["fmri1", "fmri2"]
    runs = dict(dp.store.runs.open_runs(tmp_path / "cohort"))
    for name, path in (("fmri1", a), ("fmri2", b)):
        np.testing.assert_array_equal(
            runs[name]["bold"].values, nib.load(path).get_fdata(dtype=np.float32)
        )
    tree = dp.open_store(tmp_path / "cohort")
    assert isinstance(tree, xr.DataTree)
    assert set(tree["runs"].children) == {"fmri1", "fmri2"}


def test_cohort_with_different_grids_refused_before_writing(tmp_path):
    out = tmp_path / "cohort"
    with pytest.raises(InputError, match=r"functional\.nii\.gz.*grid.*differs.*resample"):
        convert([real_scan("nitime1"), real_scan("nipy")], out)
    assert not out.exists()


def test_reconvert_same_inputs_is_a_no_op(tmp_path):
    src = real_scan("nipy")
    convert(src, tmp_path / "run", chunk_volumes=5)
    before = _tree_snapshot(tmp_path / "run")
    again = convert(src, tmp_path / "run", chunk_volumes=5)
    assert again.up_to_date and again.written_blocks == 0
    assert _tree_snapshot(tmp_path / "run") == before


def test_existing_store_from_other_inputs_refused_then_overwritten(tmp_path):
    out = tmp_path / "run"
    convert(real_scan("nipy"), out)
    before = _tree_snapshot(out)
    with pytest.raises(InputError, match=r"existing store made from other inputs.*--overwrite"):
        convert(real_scan("nitime1"), out)
    assert _tree_snapshot(out) == before
    convert(real_scan("nitime1"), out, overwrite=True)
    ds = dp.open_store(out)
    np.testing.assert_array_equal(
        ds["bold"].values, nib.load(real_scan("nitime1")).get_fdata(dtype=np.float32)
    )
    assert not any(
        p.name.endswith((".daskparcel-new", ".daskparcel-old")) for p in tmp_path.iterdir()
    )


def test_failed_overwrite_leaves_previous_store_intact(tmp_path):
    out = tmp_path / "run"
    convert(real_scan("nipy"), out)
    before = _tree_snapshot(out)
    bad = tmp_path / "cut.nii.gz"
    data = np.random.default_rng(1).random((6, 6, 6, 30)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), bad)
    bad.write_bytes(bad.read_bytes()[:-2000])
    with pytest.raises(InputError, match="truncated or corrupt"):
        convert(bad, out, overwrite=True, chunk_volumes=4)
    assert _tree_snapshot(out) == before
    dp.open_store(out)


def test_output_path_that_is_a_file_refused(tmp_path):
    out = tmp_path / "out.zarr"
    out.write_text("keep me")
    with pytest.raises(InputError, match=r"out\.zarr: the output path is a file"):
        convert(real_scan("nipy"), out)
    assert out.read_text() == "keep me"


def test_output_folder_with_other_files_refused(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="already holds other files"):
        convert(real_scan("nipy"), tmp_path / "results")
    assert (tmp_path / "results" / "thesis.tex").read_text() == "precious"


def test_empty_glob_refused(tmp_path):
    with pytest.raises(InputError, match=r"the glob matches no file"):
        convert(str(tmp_path / "sub-*_bold.nii.gz"), tmp_path / "out")


def test_non_finite_values_warned_with_count(tmp_path):
    data = np.ones((4, 4, 4, 6), np.float32)
    data[0, 0, 0, :3] = np.nan
    data[1, 1, 1, 0] = np.inf
    src = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    with pytest.warns(UserWarning, match=r"4 non-finite values"):
        result = convert(src, tmp_path / "out")
    assert result.n_nonfinite == {"nan": 4}
    np.testing.assert_array_equal(dp.open_store(tmp_path / "out")["bold"].values, data)


def test_lock_refuses_a_second_writer(tmp_path):
    out = tmp_path / "run"
    with store_lock(out):
        with pytest.raises(StoreLockedError, match="another process is writing"):
            convert(real_scan("nipy"), out)


_SLOW_CONVERT = textwrap.dedent(
    """
    import sys, time
    from daskparcel.ingest.convert import convert
    def slow(done, total):
        time.sleep(0.4)
    convert(sys.argv[1], sys.argv[2], chunk_volumes=2, progress=slow)
    """
)


def _start_slow_convert(src: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _SLOW_CONVERT, str(src), str(out)])


def _wait_for_blocks(out: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = out / PROGRESS_NAME
        if progress.exists():
            done = json.loads(progress.read_text())["done"]
            if sum(len(v) for v in done.values()) >= n:
                return
        assert proc.poll() is None, "the convert process ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError("the convert process made no progress")


def test_resume_after_sigkill_gives_identical_store(tmp_path):
    src = real_scan("nipy")  # 20 volumes -> 10 blocks of 2
    out = tmp_path / "killed"
    proc = _start_slow_convert(src, out)
    _wait_for_blocks(out, 3, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    info = store_info(out)
    assert info is not None and info["complete"] is False
    with pytest.raises(IncompleteStoreError, match=r"incomplete store.*re-run"):
        dp.open_store(out)
    resumed = convert(src, out, chunk_volumes=2)
    assert resumed.skipped_blocks >= 3
    assert resumed.written_blocks + resumed.skipped_blocks == 10
    convert(src, tmp_path / "clean", chunk_volumes=2)
    a, b = dp.open_store(out), dp.open_store(tmp_path / "clean")
    xr.testing.assert_identical(a.load(), b.load())
    assert not (out / PROGRESS_NAME).exists()


def test_two_processes_writing_one_store(tmp_path):
    src = real_scan("nipy")
    out = tmp_path / "shared"
    proc = _start_slow_convert(src, out)
    try:
        _wait_for_blocks(out, 1, proc)
        with pytest.raises(StoreLockedError, match="another process is writing this store"):
            convert(src, out, chunk_volumes=2)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    np.testing.assert_array_equal(
        dp.open_store(out)["bold"].values, nib.load(src).get_fdata(dtype=np.float32)
    )


def test_disk_full_gives_clear_error_and_previous_store_intact(tmp_path, monkeypatch):
    """A store write that fails with ENOSPC: a clear InputError, and the store being replaced is untouched."""
    import errno

    import zarr

    out = tmp_path / "run"
    convert(real_scan("nipy"), out)
    before = _tree_snapshot(out)
    calls = {"n": 0}
    original = zarr.Array.__setitem__

    def failing_setitem(self, key, value):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing_setitem)
    with pytest.raises(InputError, match=r"the disk is full.*re-run to resume"):
        convert(real_scan("nitime1"), out, overwrite=True, chunk_volumes=4)
    assert _tree_snapshot(out) == before
