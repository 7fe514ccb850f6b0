"""The daskparcel command: help for each subcommand, exit codes, one-line errors, nothing left after failure."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import real_scan

import daskparcel as dp
from daskparcel.cli import build_parser, main

SUBCOMMANDS = list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for name in ("convert", "demo"):
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: daskparcel " + name in capsys.readouterr().out


def test_convert_writes_a_store(tmp_path, capsys):
    code = main(["convert", str(real_scan("nipy")), "--out", str(tmp_path / "s"), "--quiet"])
    assert code == 0
    assert "run store" in capsys.readouterr().out
    ds = dp.open_store(tmp_path / "s")
    np.testing.assert_array_equal(
        ds["bold"].values, nib.load(real_scan("nipy")).get_fdata(dtype=np.float32)
    )


def test_bad_input_exits_2_with_one_line_and_nothing_written(tmp_path):
    bad = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), bad)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", "convert", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "vol.nii.gz" in lines[0] and "3D image" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()
