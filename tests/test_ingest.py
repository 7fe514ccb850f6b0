"""NIfTI ingest: lazy, exact (nibabel's float32 values), header kept, bad files refused clearly."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import raise_if_dask_computes, real_scan, traced_peak

from daskparcel.errors import InputError
from daskparcel.ingest.nifti import open_nifti, repetition_time

CASES = [(n, c) for n in ("nipy", "nitime1", "pymvpa", "pyhrf") for c in (1, 7, None)] + [
    ("rapidtide", None)
]


@pytest.mark.parametrize(("name", "chunk"), CASES)
def test_values_equal_nibabel_on_real_scans(name, chunk):
    path = real_scan(name)
    ds = open_nifti(path, chunk_volumes=chunk)
    img = nib.load(path)
    assert ds["bold"].dims == ("x", "y", "z", "t")
    assert ds["bold"].dtype == np.float32
    if chunk is not None:
        assert ds["bold"].data.chunks[3][0] == min(chunk, img.shape[3])
    np.testing.assert_array_equal(ds["bold"].values, img.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(ds.attrs["affine"]), img.affine)


def test_scaling_applied_as_nibabel_does():
    path = real_scan("nipy")  # int16 with scl_slope 0.0754 and scl_inter 3100.8
    img = nib.load(path)
    assert img.dataobj.slope != 1.0
    ds = open_nifti(path, chunk_volumes=3)
    np.testing.assert_array_equal(
        ds["bold"][..., 5:11].values, img.get_fdata(dtype=np.float32)[..., 5:11]
    )


def test_open_reads_nothing_but_the_header():
    path = real_scan("rapidtide")
    with raise_if_dask_computes():
        ds = open_nifti(path, chunk_volumes=10)
        ds["bold"].mean("t")
    assert ds.attrs["t_r"] == pytest.approx(1.5)
    assert ds["bold"].data.npartitions == 26


def test_default_chunk_is_a_few_tens_of_mb():
    ds = open_nifti(real_scan("rapidtide"))
    chunk = ds["bold"].data.chunksize
    assert chunk[:3] == (64, 64, 29)
    assert 10e6 < np.prod(chunk) * 4 <= 32e6


def _save(tmp_path, data, name="img.nii.gz", **header):
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    for key, value in header.items():
        img.header[key] = value
    path = tmp_path / name
    nib.save(img, path)
    return path


@pytest.mark.parametrize(
    ("unit", "pixdim4", "expected"),
    [("sec", 2.0, 2.0), ("msec", 2000.0, 2.0), ("usec", 2.5e6, 2.5)],
)
def test_repetition_time_units(tmp_path, unit, pixdim4, expected):
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2, 3))
    header.set_zooms((2.0, 2.0, 2.0, pixdim4))
    header.set_xyzt_units("mm", unit)
    t_r, note = repetition_time(header)
    assert t_r == pytest.approx(expected)
    assert unit in note


def test_repetition_time_missing_is_none():
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2, 3))
    header.set_zooms((2.0, 2.0, 2.0, 0.0))
    t_r, note = repetition_time(header)
    assert t_r is None
    assert "no repetition time" in note


def test_3d_image_refused(tmp_path):
    path = _save(tmp_path, np.ones((4, 4, 4), np.float32))
    with pytest.raises(InputError, match=r"img\.nii\.gz.*3D image.*4D"):
        open_nifti(path)


def test_5d_image_refused_but_singleton_5d_accepted(tmp_path):
    path = _save(tmp_path, np.ones((3, 3, 3, 4, 2), np.float32), "five.nii.gz")
    with pytest.raises(InputError, match=r"five\.nii\.gz.*5 dimensions.*4D"):
        open_nifti(path)
    data = np.random.default_rng(0).random((3, 3, 3, 4, 1)).astype(np.float32)
    ok = open_nifti(_save(tmp_path, data, "five1.nii.gz"))
    np.testing.assert_array_equal(ok["bold"].values, data[..., 0])


def test_text_file_named_nifti_refused(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("not an image")
    with pytest.raises(InputError, match=r"notes\.nii\.gz.*not a readable NIfTI"):
        open_nifti(path)


def test_missing_path_refused(tmp_path):
    with pytest.raises(InputError, match=r"missing\.nii\.gz: no such file"):
        open_nifti(tmp_path / "missing.nii.gz")


def test_truncated_uncompressed_nifti_refused_at_open(tmp_path):
    path = _save(tmp_path, np.ones((4, 4, 4, 10), np.float32), "cut.nii")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii: truncated"):
        open_nifti(path)


def test_truncated_gzip_detected_when_read(tmp_path):
    from daskparcel.ingest.convert import convert

    path = _save(
        tmp_path, np.random.default_rng(0).random((8, 8, 8, 40)).astype(np.float32), "cut.nii.gz"
    )
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"cut\.nii\.gz.*truncated or corrupt"):
        convert(path, out, chunk_volumes=5)
    assert not out.exists(), "a failed convert must leave nothing behind"


def test_an_in_memory_image_is_a_run_without_a_copy():
    """A nibabel image held in memory is chunked in place: no second copy of the run for the fit, the same
    values, and the same identity and graph name when it is given again (so its cached signals are found)."""
    from daskparcel.ingest.resolve import resolve_runs

    data = np.random.default_rng(0).standard_normal((20, 20, 20, 250), dtype=np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    (run,), peak = traced_peak(resolve_runs, [img], chunk_volumes=16)
    assert peak < data.nbytes / 4, (
        f"resolving an in-memory run allocated {peak} bytes for {data.nbytes}"
    )
    bold = run.data["bold"].data
    assert bold.chunks[3][0] == 16
    np.testing.assert_array_equal(bold.compute(scheduler="sync"), data)
    # its blocks are read-only views: a task cannot change the user's array, which stays writable
    block = bold.__dask_graph__()[(bold.name, 0, 0, 0, 1)]
    assert np.shares_memory(block, data) and not block.flags.writeable and data.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        block += 1
    (again,) = resolve_runs([img], chunk_volumes=16)
    assert again.identity == run.identity
    assert again.data["bold"].data.name == bold.name
    other = nib.Nifti1Image(data + 1, img.affine)
    assert resolve_runs([other], chunk_volumes=16)[0].identity != run.identity


def test_an_in_memory_dataset_is_a_run_without_a_copy():
    """A Dataset whose bold is a numpy array (e.g. ``open_nifti(path).load()``) is chunked in place too, with
    its dimensions in any order."""
    import xarray as xr

    from daskparcel.ingest.resolve import resolve_runs

    data = np.random.default_rng(1).standard_normal((40, 20, 20, 25), dtype=np.float32)
    ds = xr.Dataset(
        {"bold": (("t", "x", "y", "z"), data)}, attrs={"affine": np.eye(4).tolist(), "run": "r"}
    )
    (run,), peak = traced_peak(resolve_runs, [ds])
    assert peak < data.nbytes / 4, (
        f"resolving an in-memory Dataset allocated {peak} bytes for {data.nbytes}"
    )
    bold = run.data["bold"]
    assert bold.dims == ("t", "x", "y", "z") and bold.data.chunks[0] == (16, 16, 8)
    np.testing.assert_array_equal(bold.data.compute(scheduler="sync"), data)
    assert resolve_runs([ds])[0].identity == run.identity


@pytest.mark.parametrize("as_images", [False, True])
def test_input_files_are_hashed_on_every_local_core(tmp_path, monkeypatch, as_images):
    """The runs' SHA-256 (their cache identity) are taken in parallel, one file per local core: paths, and
    nibabel images read from their files alike. Each hash waits at a barrier that only as many concurrent
    hashes as cores pass."""
    import functools
    import threading

    import dask

    import daskparcel.store.runs as store_runs
    from daskparcel.ingest.resolve import resolve_runs

    paths = [
        _save(tmp_path, np.full((3, 3, 3, 4), i, np.float32), f"run-{i}.nii.gz") for i in range(5)
    ]
    barrier = threading.Barrier(5, timeout=10)
    real = store_runs._sha256_cached.__wrapped__

    @functools.lru_cache
    def waiting(path, size, mtime_ns):
        barrier.wait()  # BrokenBarrierError unless five files are hashed at once
        return real(path, size, mtime_ns)

    monkeypatch.setattr(store_runs, "_sha256_cached", waiting)
    items = [nib.load(p) for p in paths] if as_images else [str(p) for p in paths]
    with dask.config.set(num_workers=5):
        runs = resolve_runs(items)
    assert [r.identity for r in runs] == ["sha256:" + real(str(p.resolve()), 0, 0) for p in paths]
