"""Every ```python block of README.md runs (issue 20, item 13), in order and in one namespace, as a reader would.

The file names the README uses are replaced by the real scans of ``../shared/data/real`` (the test skips with
the reason when they are absent), the scheduler address by a local distributed cluster's, and the BIDS folder
by a small fMRIPrep layout made of the real crops. Everything runs in a temporary folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, real_scan

# README file name -> real scan (conftest.REAL_SCANS key)
REAL_FILES = {
    "sub-01_task-rest_bold.nii.gz": "rapidtide",  # the whole-brain run: ward at 1000 parcels needs its voxels
    "sub-01_bold.nii.gz": "nitime1",
    "sub-02_bold.nii.gz": "nitime2",
}
SCHEDULER = "tcp://scheduler:8786"
BIDS_ROOT = "derivatives/fmriprep"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a markdown text with the line each starts on."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text[: match.start()].count("\n") + 2, match.group(1)))
    return blocks


def test_python_blocks_are_found():
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 6
    assert all(code.strip() for _, code in blocks)


def _bids_folder(root: Path) -> None:
    """fMRIPrep's layout for two subjects, from the real crops (BOLD, confounds TSV, JSON sidecar)."""
    for subject, scan in (("01", "nitime1"), ("02", "nitime2")):
        func = root / f"sub-{subject}" / "func"
        func.mkdir(parents=True)
        stem = f"sub-{subject}_task-rest_space-MNI152NLin2009cAsym"
        shutil.copy(real_scan(scan), func / f"{stem}_desc-preproc_bold.nii.gz")
        (func / f"{stem}_desc-preproc_bold.json").write_text('{"RepetitionTime": 1.35}')
        rows = "\n".join(f"{i * 0.01:.2f}\t{i * 0.02:.2f}" for i in range(40))
        (func / f"sub-{subject}_task-rest_desc-confounds_timeseries.tsv").write_text(
            f"csf\twhite_matter\n{rows}\n"
        )


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    import distributed

    text = (REPO / "README.md").read_text()
    for name, scan in REAL_FILES.items():
        text = text.replace(f'"{name}"', f'"{real_scan(scan)}"')
    _bids_folder(tmp_path / BIDS_ROOT)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        text = text.replace(f'"{SCHEDULER}"', f'"{cluster.scheduler_address}"')
        for line, code in python_blocks(text):
            try:
                exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
            except Exception as exc:
                pytest.fail(f"README.md block at line {line}: {type(exc).__name__}: {exc}")
    assert (tmp_path / "compressed.nii.gz").exists()
