"""Degenerate inputs: empty, constant, all-NaN and one-volume runs, and a mask that keeps the whole grid.

Each refused case asserts, through the Python API and the CLI, the error (exit code 2), one line naming the file
(not the internal variable ``bold``), and that nothing is written to the output location. A mask of the whole
grid is a warning with its counts, naming the mask file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import raise_if_dask_computes

from daskparcel import Parcellations
from daskparcel.cli import main
from daskparcel.errors import InputError

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
SHAPE = (20, 20, 20)


def _save(data: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, path)
    return path


def _brain(n: int = 30, seed: int = 0) -> np.ndarray:
    """A bright block in a dark, noisy background: a real EPI and background mask exist."""
    rng = np.random.default_rng(seed)
    data = rng.normal(20, 3, (*SHAPE, n)).round()
    data[4:16, 5:15, 4:16] += 800 + rng.normal(0, 20, (12, 10, 12, n)).round()
    return data.astype(np.float32)


def _zeros(tmp: Path, suffix: str = ".nii.gz") -> Path:
    return _save(np.zeros((*SHAPE, 30), np.float32), tmp / f"zeros{suffix}")


def _constant(tmp: Path, suffix: str = ".nii.gz") -> Path:
    return _save(np.full((*SHAPE, 30), 100.0, np.float32), tmp / f"constant{suffix}")


def _nan(tmp: Path, suffix: str = ".nii.gz") -> Path:
    return _save(np.full((*SHAPE, 30), np.nan, np.float32), tmp / f"allnan{suffix}")


def _one_volume(tmp: Path, suffix: str = ".nii.gz") -> Path:
    return _save(_brain(n=1), tmp / f"onevolume{suffix}")


REFUSED = {
    # file maker, what the message must say (after the file's name)
    "all-zero": (_zeros, r"all-zero image .*0 at all 8,000 voxels.*check the file"),
    "constant": (_constant, r"constant image .*100 at all 8,000 voxels.*check the file"),
    "all-nan": (_nan, r"every voxel is NaN or infinite.*check the file"),
    "one-volume": (_one_volume, r"has 1 volume; a run needs at least 2 volumes"),
}


def _fit(imgs: Any, tmp: Path, strategy: str) -> Parcellations:
    est = Parcellations(
        "kmeans", n_parcels=5, n_components=5, store=tmp / "cache", mask_strategy=strategy
    )
    return est.fit(imgs)


def _cli(imgs: list[Path], tmp: Path, *words: str) -> list[str]:
    return ["fit", *map(str, imgs), "--method", "kmeans", "--n-parcels", "5", "--n-components", "5",
            "--store", str(tmp / "cache"), "--out", str(tmp / "out"), "--quiet", *words]  # fmt: skip


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("strategy", ["epi", "background"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_through_the_api(case, suffix, strategy, tmp_path):
    make, message = REFUSED[case]
    path = make(tmp_path, suffix)
    before = _files(tmp_path)
    with pytest.raises(InputError) as info:
        _fit(path, tmp_path, strategy)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path)), text  # the file, not 'bold' or 'run 0'
    assert re.search(message, text), text
    assert "'bold'" not in text
    assert _files(tmp_path) == before  # no store, no output


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_by_the_cli(case, tmp_path, capsys):
    make, message = REFUSED[case]
    path = make(tmp_path)
    before = _files(tmp_path)
    code = main(_cli([path], tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(path) in err[0] and re.search(message, err[0]), err[0]
    assert _files(tmp_path) == before


def test_one_volume_refused_before_any_data_is_read(tmp_path):
    path = _one_volume(tmp_path)
    with raise_if_dask_computes(), pytest.raises(InputError, match=r"onevolume\.nii\.gz: has 1"):
        _fit(path, tmp_path, "epi")


@pytest.mark.parametrize("strategy", ["epi", "background"])
def test_all_nan_run_among_good_runs_is_named(strategy, tmp_path):
    good = _save(_brain(), tmp_path / "good.nii.gz")
    bad = _nan(tmp_path)
    with pytest.raises(InputError) as info:
        _fit([good, bad], tmp_path, strategy)
    text = str(info.value)
    assert text.startswith(str(bad)) and "NaN" in text, text
    assert str(good) not in text


def test_all_nan_run_is_not_told_to_use_the_strategy_it_uses(tmp_path, capsys):
    path = _nan(tmp_path)
    assert main(_cli([path], tmp_path, "--mask-strategy", "background")) == 2
    err = capsys.readouterr().err
    assert "allnan.nii.gz" in err
    assert "'background'" not in err, err


def test_empty_background_mask_does_not_advise_background(tmp_path):
    # a bright edge-to-edge slab: the background (border median) is the slab's value almost everywhere
    data = _brain()
    data[:, :, 2:18] = 500.0
    path = _save(data, tmp_path / "slab.nii.gz")
    with pytest.raises(InputError) as info:
        _fit(path, tmp_path, "background")
    text = str(info.value)
    assert text.startswith(str(path)) and "background mask is empty" in text, text
    assert "e.g. 'epi'" in text and "e.g. 'background'" not in text, text


def test_whole_grid_mask_file_is_warned_about_with_counts(tmp_path):
    run = _save(_brain(), tmp_path / "run.nii.gz")
    mask = tmp_path / "everything.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE), mask)
    est = Parcellations("kmeans", n_parcels=5, n_components=5, store=tmp_path / "cache", mask=mask)
    with pytest.warns(
        UserWarning, match=r"everything\.nii\.gz: keeps all 8,000 of the 8,000 voxels"
    ):
        est.fit(run)
    assert est.labels_img_.get_fdata().astype(bool).all()
    # the CLI (in its own process: pytest records warnings instead of printing them): the fit goes on
    # (exit 0) and says so in one line naming the file
    done = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", *_cli([run], tmp_path, "--mask", str(mask))],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    err = [line for line in done.stderr.splitlines() if "everything.nii.gz" in line]
    assert len(err) == 1 and "8,000 of the 8,000" in err[0], done.stderr


def test_brain_mask_is_not_warned_about(tmp_path):
    run = _save(_brain(), tmp_path / "run.nii.gz")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*keeps all")
        est = _fit(run, tmp_path, "epi")
    assert 0 < est.mask_img_.get_fdata().sum() < np.prod(SHAPE)
