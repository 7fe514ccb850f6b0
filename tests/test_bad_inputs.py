"""The bad-input catalogue: every case through the Python API and the CLI.

Each case asserts the error type, that the message names the input and says what to do, that the CLI exits 2
with one line on stderr (no traceback), and that nothing is written or left in the output location.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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


def _bold(shape=(12, 12, 10), n=30, seed=0, affine=AFFINE) -> nib.Nifti1Image:
    rng = np.random.default_rng(seed)
    data = np.zeros((*shape, n), np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    data[inner] = rng.normal(1000, 20, (*(s - 4 for s in shape), n))
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    return img


@dataclass
class Case:
    """A bad input: how to make it (files in ``tmp``), the API call, the CLI words, the message expected."""

    id: str
    make: Callable[[Path], dict[str, Any]]  # -> named paths/values used below
    api: Callable[[dict[str, Any], Path], Any] | None
    cli: Callable[[dict[str, Any], Path], list[str]] | None
    message: str  # regex the message must match (names the input and the fix)
    error: type[Exception] = InputError
    extra: dict[str, Any] = field(default_factory=dict)


def _no_tr() -> nib.Nifti1Image:
    img = _bold()
    img.header["pixdim"][4] = 0.0
    return img


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    nib.save(img, path)
    return path


def _run(tmp: Path, **kw: Any) -> dict[str, Any]:
    return {"run": _save(_bold(**kw), tmp / "run.nii.gz")}


def _fit_api(method: str = "kmeans", **params: Any) -> Callable[[dict[str, Any], Path], Any]:
    def call(files: dict[str, Any], out: Path) -> Any:
        imgs = files.get("imgs", files.get("run"))
        kwargs = {
            "n_parcels": 5,
            "n_components": 5,
            "store": out.parent / "cache",
            "mask_strategy": "background",
        }
        kwargs.update(params)
        return Parcellations(method=method, **kwargs).fit(imgs, **files.get("fit_kwargs", {}))

    return call


def _fit_cli(*words: str, method: str = "kmeans") -> Callable[[dict[str, Any], Path], list[str]]:
    def args(files: dict[str, Any], out: Path) -> list[str]:
        imgs = files.get("imgs", files.get("run"))
        imgs = [str(i) for i in imgs] if isinstance(imgs, list) else [str(imgs)]
        return ["fit", *imgs, "--method", method, "--n-parcels", "5", "--n-components", "5",
                "--mask-strategy", "background", "--store", str(out.parent / "cache"), "--out", str(out),
                "--quiet", *words]  # fmt: skip

    return args


def _three_d(tmp: Path) -> dict[str, Any]:
    return {
        "run": _save(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), AFFINE), tmp / "vol3d.nii.gz")
    }


def _five_d(tmp: Path) -> dict[str, Any]:
    return {
        "run": _save(
            nib.Nifti1Image(np.ones((5, 5, 5, 4, 3), np.float32), AFFINE), tmp / "vol5d.nii.gz"
        )
    }


def _text(tmp: Path) -> dict[str, Any]:
    path = tmp / "notes.nii.gz"
    path.write_text("these are my notes, not an image")
    return {"run": path}


def _truncated(tmp: Path) -> dict[str, Any]:
    path = _save(_bold(n=60), tmp / "cut.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return {"run": path}


def _grids(tmp: Path) -> dict[str, Any]:
    a = _save(_bold(), tmp / "grid_a.nii.gz")
    b = _save(_bold(shape=(10, 12, 10)), tmp / "grid_b.nii.gz")
    return {"imgs": [a, b]}


def _all_zero(tmp: Path) -> dict[str, Any]:
    return {
        "run": _save(
            nib.Nifti1Image(np.zeros((8, 8, 8, 20), np.float32), AFFINE), tmp / "zeros.nii.gz"
        )
    }


def _bids_empty(tmp: Path) -> dict[str, Any]:
    root = tmp / "fmriprep"
    (root / "sub-01" / "func").mkdir(parents=True)
    _save(_bold(), root / "sub-01" / "func" / "sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz")
    return {"bids": root}


def _confounds_tsv(tmp: Path) -> dict[str, Any]:
    files = _run(tmp)
    tsv = tmp / "sub-01_desc-confounds_timeseries.tsv"
    tsv.write_text("csf\twhite_matter\n" + "\n".join(f"{i}\t{i * 2}" for i in range(30)) + "\n")
    files["tsv"] = tsv
    return files


def _confounds_text(tmp: Path) -> dict[str, Any]:
    files = _run(tmp)
    tsv = tmp / "sub-01_desc-confounds_timeseries.tsv"
    tsv.write_text("csf\tnote\n" + "\n".join(f"{i}\tvolume {i}" for i in range(30)) + "\n")
    files["tsv"] = tsv
    return files


def _job(tmp: Path, content: str) -> dict[str, Any]:
    files = _run(tmp)
    job = tmp / "job.yaml"
    job.write_text(content.replace("RUN", str(files["run"])))
    files["job"] = job
    return files


def _store_from_other(tmp: Path) -> dict[str, Any]:
    from daskparcel.ingest.convert import convert

    files = _run(tmp)
    other = _save(_bold(seed=5), tmp / "other.nii.gz")
    files["other"] = other
    files["store"] = tmp / "store.zarr"
    convert(other, files["store"])
    return files


def _out_is_file(tmp: Path) -> dict[str, Any]:
    files = _run(tmp)
    (tmp / "out").write_text("an existing file")
    return files


def _labels(tmp: Path, data: Any, name: str = "atlas.nii.gz") -> dict[str, Any]:
    files = _run(tmp)
    files["labels"] = _save(nib.Nifti1Image(data, AFFINE), tmp / name)
    return files


def _empty_labels(tmp: Path) -> dict[str, Any]:
    files = _run(tmp)
    files["labels"] = tmp / "labels.nii.gz"
    files["labels"].write_bytes(b"")
    return files


def _corrupt_fit_folder(tmp: Path) -> dict[str, Any]:
    files = _run(tmp)
    folder = tmp / "fitdir"
    folder.mkdir()
    labels = np.zeros((12, 12, 10), np.int32)
    labels[2:10, 2:10, 2:8] = 1
    _save(nib.Nifti1Image(labels, AFFINE), folder / "labels.nii.gz")
    _save(nib.Nifti1Image((labels > 0).astype(np.int8), AFFINE), folder / "mask.nii.gz")
    (folder / "fit.json").write_text('{"parameters": {"smoothing_fwhm": 2')  # cut short
    files["labels"] = folder
    return files


def _transform_cli(files: dict[str, Any], out: Path) -> list[str]:
    return ["transform", str(files["run"]), "--labels", str(files["labels"]), "--out", str(out)]


def _job_case(id: str, body: str, message: str) -> Case:
    """A job file that is wrong in one key: refused by load_job and by `daskparcel run`, nothing written."""
    return Case(
        id,
        lambda t: _job(t, body),
        lambda f, o: __import__("daskparcel.jobs").jobs.load_job(f["job"]),
        lambda f, o: ["run", str(f["job"])],
        message,
    )


_LABELS_3D = np.zeros((12, 12, 10), np.float32)
_LABELS_3D[2:10, 2:10, 2:8] = 1


CASES = [
    Case(
        "3d-image",
        _three_d,
        _fit_api(),
        _fit_cli(),
        r"vol3d\.nii\.gz: is a 3D image.*give the 4D run",
    ),
    Case(
        "5d-image", _five_d, _fit_api(), _fit_cli(), r"vol5d\.nii\.gz: has 5 dimensions.*must be 4D"
    ),
    Case(
        "text-file-named-nifti",
        _text,
        _fit_api(),
        _fit_cli(),
        r"notes\.nii\.gz: not a readable NIfTI.*give a 4D",
    ),
    Case(
        "truncated-gzip",
        _truncated,
        _fit_api(),
        _fit_cli(),
        r"cut\.nii\.gz: could not read.*truncated or corrupt.*again",
    ),
    Case(
        "missing-path",
        lambda t: {"run": t / "absent.nii.gz"},
        _fit_api(),
        _fit_cli(),
        r"absent\.nii\.gz: no such file; check the path",
    ),
    Case(
        "empty-glob",
        lambda t: {"run": str(t / "sub-*_bold.nii.gz")},
        _fit_api(),
        _fit_cli(),
        r"sub-\*_bold\.nii\.gz: the glob matches no file",
    ),
    Case(
        "bids-no-match",
        _bids_empty,
        lambda f, o: Parcellations(method="kmeans", store=o.parent / "c").fit(
            __import__("daskparcel").find_bids_runs(f["bids"], task="nback")
        ),
        lambda f, o: [
            "fit",
            "--bids",
            str(f["bids"]),
            "--task",
            "nback",
            "--method",
            "kmeans",
            "--out",
            str(o),
        ],
        r"fmriprep: no BOLD run matches task=\[?'?nback.*Change the filters",
    ),
    Case(
        "different-grids",
        _grids,
        _fit_api(),
        _fit_cli(),
        r"grid_b.*grid \(10, 12, 10\) differs.*resample",
    ),
    Case("all-zero-image", _all_zero, _fit_api(), _fit_cli(), r"(mask|no voxel).*(strategy|mask)"),
    Case(
        "unknown-method",
        _run,
        _fit_api("spectral"),
        None,
        r"method='spectral': unknown; pass one of kmeans",
    ),
    Case(
        "n-parcels-zero",
        _run,
        _fit_api(n_parcels=0),
        _fit_cli("--n-parcels", "0"),
        r"(n_parcels=|--n-parcels )0: must be an integer >= 1",
    ),
    Case(
        "n-parcels-negative",
        _run,
        _fit_api(n_parcels=-4),
        _fit_cli("--n-parcels", "-4"),
        r"(n_parcels=|--n-parcels )-4: must be an integer >= 1",
    ),
    Case(
        "n-parcels-not-integer",
        _run,
        _fit_api(n_parcels=3.5),
        None,
        r"n_parcels=3\.5: must be an integer",
    ),
    Case(
        "n-parcels-above-voxels",
        _run,
        _fit_api(n_parcels=10**6),
        _fit_cli("--n-parcels", "1000000"),
        r"n_parcels=1000000: larger than the \d+ voxels.*fewer parcels",
    ),
    Case(
        "confounds-wrong-length",
        _run,
        lambda f, o: _fit_api()({**f, "fit_kwargs": {"confounds": np.zeros((12, 2))}}, o),
        None,
        r"confounds of run.*12.*30",
    ),
    Case(
        "confounds-tsv-missing-columns",
        _confounds_tsv,
        lambda f, o: _fit_api(confounds_columns=["csf", "global_signal"])(
            {**f, "fit_kwargs": {"confounds": f["tsv"]}}, o
        ),
        lambda f, o: _fit_cli(
            "--confounds", str(f["tsv"]), "--confounds-columns", "csf", "global_signal"
        )(f, o),
        r"confounds_timeseries\.tsv: no column matches \['global_signal'\]; available columns",
    ),
    Case(  # issue 20, item 9: the advice names both spellings, the estimator's and the CLI's
        "confounds-tsv-text-column",
        _confounds_text,
        lambda f, o: _fit_api()({**f, "fit_kwargs": {"confounds": f["tsv"]}}, o),
        lambda f, o: _fit_cli("--confounds", str(f["tsv"]))(f, o),
        r"confounds_timeseries\.tsv: columns \['note'\] are not numeric; .*confounds_columns=\[\.\.\.\] "
        r"\(on the command line: --confounds-columns\)",
    ),
    Case(
        "t-r-missing-when-filtering",
        lambda t: {"run": _save(_no_tr(), t / "notr.nii.gz")},
        _fit_api(low_pass=0.1),
        _fit_cli("--low-pass", "0.1"),
        r"notr.*repetition time.*pass t_r",
    ),
    Case(
        "sample-mask-out-of-range",
        _run,
        lambda f, o: _fit_api()({**f, "fit_kwargs": {"sample_mask": np.array([0, 5, 99])}}, o),
        None,
        r"sample_mask of run: indices out of range for 30 volumes",
    ),
    Case(
        "negative-fwhm",
        _run,
        _fit_api(smoothing_fwhm=-3.0),
        _fit_cli("--smoothing-fwhm", "-3"),
        r"(smoothing_fwhm=|--smoothing-fwhm )-3(\.0)?: must be >= 0",
    ),
    Case(
        "mask-with-no-voxel",
        lambda t: {
            **_run(t),
            "mask": _save(
                nib.Nifti1Image(np.zeros((12, 12, 10), np.uint8), AFFINE), t / "empty_mask.nii.gz"
            ),
        },
        lambda f, o: _fit_api(mask=f["mask"])(f, o),
        lambda f, o: _fit_cli("--mask", str(f["mask"]))(f, o),
        r"empty_mask\.nii\.gz: is empty.*pass a non-empty mask",
    ),
    Case(
        "unreachable-scheduler",
        _run,
        _fit_api(client="tcp://127.0.0.1:1"),
        _fit_cli("--scheduler", "tcp://127.0.0.1:1"),
        r"127\.0\.0\.1:1.*(reach|connect)",
    ),
    Case(
        "job-file-unknown-key",
        lambda t: _job(
            t, "inputs: {files: [RUN]}\nparcellation: {method: ward, n_parcles: 5}\noutput: out\n"
        ),
        lambda f, o: __import__("daskparcel.jobs").jobs.load_job(f["job"]),
        lambda f, o: ["run", str(f["job"])],
        r"job\.yaml: unknown key 'parcellation\.n_parcles'",
    ),
    Case(
        "job-file-missing-input",
        lambda t: _job(
            t, "inputs: {files: [missing_run.nii.gz]}\nparcellation: {method: ward}\noutput: out\n"
        ),
        lambda f, o: __import__("daskparcel.jobs").jobs.load_job(f["job"]),
        lambda f, o: ["run", str(f["job"])],
        r"job\.yaml: inputs\.files: 'missing_run\.nii\.gz' does not exist",
    ),
    # issue 20, item 2: every key of a job file type-checked, every path checked, before anything is written
    _job_case(
        "job-detrend-as-text",
        "inputs: {files: [RUN]}\nparcellation: {method: ward, detrend: 'false'}\noutput: out\n",
        r"job\.yaml: parcellation\.detrend: 'false' must be a boolean",
    ),
    _job_case(
        "job-n-parcels-as-text",
        "inputs: {files: [RUN]}\nparcellation: {method: ward, n_parcels: '10'}\noutput: out\n",
        r"job\.yaml: parcellation\.n_parcels: '10' must be an integer",
    ),
    _job_case(
        "job-smoothing-with-units",
        "inputs: {files: [RUN]}\nparcellation: {method: ward, smoothing_fwhm: 4mm}\noutput: out\n",
        r"job\.yaml: parcellation\.smoothing_fwhm: '4mm' must be >= 0 \(a FWHM in mm\)",
    ),
    _job_case(
        "job-output-a-list",
        "inputs: {files: [RUN]}\nparcellation: {method: ward}\noutput: [out, other]\n",
        r"job\.yaml: output: \['out', 'other'\] is not a folder path",
    ),
    _job_case(
        "job-convert-as-text",
        "inputs: {files: [RUN]}\nconvert: 'no'\nparcellation: {method: ward}\noutput: out\n",
        r"job\.yaml: convert: 'no' is not a boolean",
    ),
    _job_case(
        "job-where-nowhere",
        "inputs: {files: [RUN]}\nparcellation: {method: ward}\noutput: out\nwhere: nowhere\n",
        r"job\.yaml: where: 'nowhere' is neither a scheduler address .* nor an existing cluster YAML",
    ),
    _job_case(
        "job-where-missing-cluster-file",
        "inputs: {files: [RUN]}\nparcellation: {method: ward}\noutput: out\nwhere: slurm.yaml\n",
        r"job\.yaml: where: 'slurm\.yaml' is neither .*slurm\.yaml",
    ),
    _job_case(
        "job-mask-missing",
        "inputs: {files: [RUN]}\nparcellation: {method: ward, mask: nomask.nii.gz}\noutput: out\n",
        r"job\.yaml: parcellation\.mask: 'nomask\.nii\.gz' must be an existing file \(.*nomask\.nii\.gz does not exist",
    ),
    _job_case(
        "job-output-read-only",
        "inputs: {files: [RUN]}\nparcellation: {method: ward}\noutput: /proc/daskparcel-job\n",
        r"job\.yaml: output: /proc/daskparcel-job: cannot write in /proc",
    ),
    # issue 20, item 7: output locations and fit folders checked before any data is read
    Case(
        "out-read-only",
        _run,
        None,
        lambda f, o: [*_fit_cli()(f, o), "--out", "/proc/daskparcel-out"],  # the last --out wins
        r"--out /proc/daskparcel-out: cannot write in /proc",
    ),
    Case(
        "store-read-only",
        _run,
        None,
        lambda f, o: [*_fit_cli()(f, o), "--store", "/proc/daskparcel-cache"],
        r"--store /proc/daskparcel-cache: cannot write in /proc",
    ),
    Case(
        "convert-out-read-only",
        _run,
        None,
        lambda f, o: ["convert", str(f["run"]), "--out", "/proc/daskparcel-store.zarr", "--quiet"],
        r"--out /proc/daskparcel-store\.zarr: cannot write in /proc",
    ),
    # (labels on another grid than the runs are resampled since issue 22, item 4: tests/test_atlas.py)
    Case(
        "transform-empty-labels-file",
        _empty_labels,
        lambda f, o: Parcellations.from_labels(f["labels"]),
        _transform_cli,
        r"labels\.nii\.gz: not a readable NIfTI labels image",
    ),
    Case(
        "transform-corrupt-fit-json",
        _corrupt_fit_folder,
        None,
        _transform_cli,
        r"fitdir/fit\.json: not a readable fit\.json .*re-run `daskparcel fit`",
    ),
    # issue 20, item 9: labels refused naming the file
    Case(
        "labels-float",
        lambda t: _labels(t, _LABELS_3D * 0.5, "float_atlas.nii.gz"),
        lambda f, o: Parcellations.from_labels(f["labels"]),
        _transform_cli,
        r"float_atlas\.nii\.gz: a 3D float32 image; give a 3D image of integer labels",
    ),
    Case(
        "labels-negative",
        lambda t: _labels(t, (_LABELS_3D - 2).astype(np.int16), "negative_atlas.nii.gz"),
        lambda f, o: Parcellations.from_labels(f["labels"]),
        _transform_cli,
        r"negative_atlas\.nii\.gz: negative labels",
    ),
    Case(
        "labels-4d",
        lambda t: _labels(t, np.stack([_LABELS_3D] * 2, -1).astype(np.int16), "atlas4d.nii.gz"),
        lambda f, o: Parcellations.from_labels(f["labels"]),
        _transform_cli,
        r"atlas4d\.nii\.gz: a 4D int16 image; give a 3D image",
    ),
    # issue 20, item 10: the same file twice, refused by fit as by convert
    Case(
        "same-file-twice",
        lambda t: {"imgs": [_save(_bold(), t / "twice.nii.gz")] * 2},
        _fit_api(),
        _fit_cli(),
        r"twice\.nii\.gz: given twice .*give each run once",
    ),
    Case(
        "output-path-is-a-file",
        _out_is_file,
        None,
        _fit_cli(),
        r"out: the output path is a file; give a folder",
    ),
    Case(
        "existing-store-from-other-inputs",
        _store_from_other,
        lambda f, o: __import__("daskparcel").convert(f["run"], f["store"]),
        lambda f, o: ["convert", str(f["run"]), "--out", str(f["store"]), "--quiet"],
        r"store\.zarr: an existing store made from other inputs.*--overwrite",
    ),
    Case(
        "transform-labels-missing",
        _run,
        None,
        lambda f, o: [
            "transform",
            str(f["run"]),
            "--labels",
            str(o.parent / "nolabels.nii.gz"),
            "--out",
            str(o),
        ],
        r"nolabels\.nii\.gz: no such labels image",
    ),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_catalogue_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", [c for c in CASES if c.api is not None], ids=lambda c: c.id)
def test_api(case: Case, tmp_path: Path):
    files = case.make(tmp_path)
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    with pytest.raises(case.error, match=case.message):
        case.api(files, out)  # type: ignore[misc]
    assert not out.exists() or out.is_file(), "nothing may be written to the output location"
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cache")} == before


@pytest.mark.parametrize("case", [c for c in CASES if c.cli is not None], ids=lambda c: c.id)
def test_cli(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    files = case.make(tmp_path)
    out = tmp_path / "out"
    existed = out.exists()
    before = _snapshot(tmp_path)
    code = main(case.cli(files, out))  # type: ignore[misc]
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert __import__("re").search(case.message, err[0]), err[0]
    assert out.exists() == existed
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cache")} == before


def test_mask_on_another_grid_is_resampled_with_a_warning(tmp_path):
    run = _save(_bold(), tmp_path / "run.nii.gz")
    mask = np.zeros((24, 24, 20), np.uint8)
    mask[4:20, 4:20, 4:16] = 1
    mask_path = _save(
        nib.Nifti1Image(mask, np.diag([1.5, 1.5, 1.5, 1.0])), tmp_path / "fine_mask.nii.gz"
    )
    with pytest.warns(UserWarning, match="resampl"):
        est = Parcellations(
            method="kmeans", n_parcels=4, n_components=4, mask=mask_path, store=tmp_path / "c"
        ).fit(run)
    assert est.mask_img_.shape == (12, 12, 10)


def test_non_finite_voxels_are_zeroed_as_nilearn(tmp_path):
    img = _bold()
    data = img.get_fdata(dtype=np.float32)
    data[5, 5, 5, :4] = np.nan
    data[6, 6, 6, 2] = np.inf
    run = _save(nib.Nifti1Image(data, AFFINE, img.header), tmp_path / "nan.nii.gz")
    est = Parcellations(
        method="ward", n_parcels=6, n_components=5, mask_strategy="background", store=tmp_path / "c"
    ).fit(run)
    assert np.isfinite(np.asarray(est.transform(run))).all()


def test_constant_voxels_under_standardize_give_zeros_with_a_count(tmp_path):
    img = _bold()
    data = img.get_fdata(dtype=np.float32)
    data[4, 4, 4] = 1000.0
    run = _save(nib.Nifti1Image(data, AFFINE, img.header), tmp_path / "const.nii.gz")
    with pytest.warns(UserWarning, match=r"1 of \d+ voxels have a constant"):
        Parcellations(
            method="kmeans", n_parcels=4, n_components=4, smoothing_fwhm=None, standardize="zscore_sample",
            mask_strategy="background", store=tmp_path / "c",
        ).fit(run)  # fmt: skip


def test_fewer_time_points_than_components_is_capped_as_nilearn(tmp_path):
    run = _save(_bold(n=12), tmp_path / "short.nii.gz")
    est = Parcellations(
        method="kmeans",
        n_parcels=4,
        n_components=200,
        mask_strategy="background",
        store=tmp_path / "c",
    ).fit(run)
    assert est.components_.shape[0] <= 12


def test_validation_reads_no_data(tmp_path):
    """Bad parameters are refused before any graph computes (no pass over the data to validate)."""
    run = _save(_bold(), tmp_path / "run.nii.gz")
    with raise_if_dask_computes(0), pytest.raises(InputError):
        Parcellations(method="ward", n_parcels=0).fit(run)


def test_transform_before_fit_and_wrong_parcels(tmp_path):
    from sklearn.exceptions import NotFittedError

    run = _save(_bold(), tmp_path / "run.nii.gz")
    with pytest.raises(NotFittedError, match="call fit"):
        Parcellations(method="ward").transform(run)
    est = Parcellations(
        method="ward", n_parcels=5, n_components=5, mask_strategy="background", store=tmp_path / "c"
    ).fit(run)
    with pytest.raises(InputError, match="signals have 3 parcels, the parcellation has 5"):
        est.inverse_transform(np.zeros((30, 3)))


def test_cluster_file_for_a_missing_system(tmp_path):
    import importlib.util

    cluster = tmp_path / "k8s.yaml"
    cluster.write_text(
        "kind: kubernetes\nname: parcels\nimage: ghcr.io/example/daskparcel:latest\n"
    )
    if importlib.util.find_spec("dask_kubernetes") is not None:
        pytest.skip("dask-kubernetes is installed here")
    run = _save(_bold(), tmp_path / "run.nii.gz")
    with pytest.raises(InputError, match=r"kubernetes.*pip install .*daskparcel\[kubernetes\]"):
        Parcellations(method="ward", n_parcels=4, client=str(cluster), store=tmp_path / "c").fit(
            run
        )
