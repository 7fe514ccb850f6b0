"""BIDS derivatives discovery (fMRIPrep layout)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from daskparcel.errors import InputError
from daskparcel.ingest.bids import find_bids_runs, parse_entities


def _touch_run(root, sub, task, run=None, ses=None, space="MNI152NLin2009cAsym", t_r=None):
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
    folder.mkdir(parents=True, exist_ok=True)
    prefix = (
        f"sub-{sub}"
        + (f"_ses-{ses}" if ses else "")
        + f"_task-{task}"
        + (f"_run-{run}" if run else "")
    )
    bold = folder / f"{prefix}_space-{space}_desc-preproc_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), bold)
    (folder / f"{prefix}_desc-confounds_timeseries.tsv").write_text("csf\tglobal_signal\n1\t2\n")
    (folder / f"{prefix}_space-{space}_desc-brain_mask.nii.gz").write_bytes(b"")
    if t_r is not None:
        (folder / f"{prefix}_space-{space}_desc-preproc_bold.json").write_text(
            json.dumps({"RepetitionTime": t_r})
        )
    return bold


@pytest.fixture
def derivatives(tmp_path):
    root = tmp_path / "fmriprep"
    _touch_run(root, "01", "rest", run="1", t_r=2.0)
    _touch_run(root, "01", "rest", run="2", t_r=2.0)
    _touch_run(root, "02", "rest", ses="pre", t_r=0.8)
    _touch_run(root, "02", "motor", ses="pre")
    _touch_run(root, "03", "rest", space="T1w")
    return root


def test_entities_parsed():
    entities = parse_entities("sub-01_ses-2_task-rest_run-3_space-MNI_desc-preproc_bold.nii.gz")
    assert entities == {
        "sub": "01",
        "ses": "2",
        "task": "rest",
        "run": "3",
        "space": "MNI",
        "desc": "preproc",
    }


def test_all_preprocessed_runs_found_with_confounds_and_tr(derivatives):
    runs = find_bids_runs(derivatives)
    assert len(runs) == 5
    first = runs[0]
    assert first.subject == "01" and first.entities["run"] == "1"
    assert (
        first.confounds is not None
        and first.confounds.name == "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"
    )
    assert first.t_r == 2.0
    assert first.name == "sub-01_task-rest_run-1"
    session_run = next(r for r in runs if r.subject == "02" and r.entities["task"] == "rest")
    assert session_run.t_r == 0.8 and session_run.entities["ses"] == "pre"
    assert next(r for r in runs if r.entities["task"] == "motor").t_r is None


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"subject": "01"}, 2),
        ({"subject": ["sub-01", "02"]}, 4),
        ({"task": "rest"}, 4),
        ({"space": "T1w"}, 1),
        ({"session": "pre", "task": "motor"}, 1),
        ({"run": "2"}, 1),
    ],
)
def test_filters(derivatives, filters, expected):
    assert len(find_bids_runs(derivatives, **filters)) == expected


def test_no_match_lists_what_is_there(derivatives):
    with pytest.raises(InputError, match=r"no BOLD run matches task=nback.*holds e\.g\. sub-01"):
        find_bids_runs(derivatives, task="nback")


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no such BIDS derivatives folder"):
        find_bids_runs(tmp_path / "nope")
