"""Loading confound regressors (an array, a DataFrame, or an fMRIPrep-style TSV/CSV file).

fMRIPrep's ``*_desc-confounds_timeseries.tsv`` writes ``n/a`` in the first row of derivative columns
(``*_derivative1``, ``*_derivative1_power2``): as nilearn's
:func:`nilearn.interfaces.fmriprep.load_confounds` does (``prepare_output``), a NaN in the first row
is replaced by the value of the second row. Any other missing value is refused.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["load_confounds"]

ConfoundsLike = np.ndarray | pd.DataFrame | str | Path


def _read_table(path: Path, source: str) -> pd.DataFrame:
    if not path.exists():
        raise InputError(
            f"confounds file {source}: does not exist; pass the path of a TSV/CSV file"
        )
    name = path.name.lower()
    sep: str | None = "\t" if name.endswith((".tsv", ".tsv.gz")) else None
    if name.endswith((".csv", ".csv.gz")):
        sep = ","
    try:
        table = pd.read_csv(
            path, sep=sep, engine="python" if sep is None else "c", na_values=["n/a", "N/A"]
        )
    except Exception as exc:
        raise InputError(
            f"confounds file {source}: cannot be read as a TSV/CSV table ({exc})"
        ) from None
    # a file without a header: its first row is numbers
    try:
        [float(c) for c in table.columns]
    except ValueError:
        return table
    table = pd.read_csv(
        path,
        sep=sep,
        engine="python" if sep is None else "c",
        header=None,
        na_values=["n/a", "N/A"],
    )
    table.columns = [str(c) for c in table.columns]
    return table


def _select(table: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    available = [str(c) for c in table.columns]
    chosen: list[str] = []
    missing: list[str] = []
    for pattern in columns:
        matches = [c for c in available if fnmatch.fnmatchcase(c, pattern)]
        if not matches:
            missing.append(pattern)
        chosen.extend(c for c in matches if c not in chosen)
    if missing:
        raise InputError(
            f"confounds {source}: no column matches {missing}; available columns: {available}. "
            "Pass names or glob patterns (e.g. 'trans_*') from that list"
        )
    table = table.copy()
    table.columns = available
    return table[chosen]


def load_confounds(
    confounds: ConfoundsLike,
    n_scans: int,
    *,
    columns: Sequence[str] | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Confound regressors of one run as a float64 array (n_scans, n_confounds).

    Parameters
    ----------
    confounds : numpy.ndarray, pandas.DataFrame, or path of a TSV/CSV file
        One row per volume. A file has a header row (fMRIPrep's does) or none.
    n_scans : int
        Time points of the run: the confounds must have as many rows.
    columns : list of str, optional
        Columns to keep, by exact name or glob pattern (``["trans_*", "rot_*", "csf",
        "white_matter"]``), in the order given. All columns when None. Not for arrays.
    source : str, optional
        How to name the confounds in messages (default: the file path, or "confounds").

    Returns
    -------
    numpy.ndarray (n_scans, n_confounds) of float64

    Raises
    ------
    InputError
        Unreadable file, a pattern matching no column (naming the available ones), non-numeric
        columns, missing values beyond the first row, or a length other than ``n_scans``.
    """
    if isinstance(confounds, (str, Path)):
        path = Path(confounds)
        source = source or str(path)
        table: pd.DataFrame | None = _read_table(path, source)
    elif isinstance(confounds, pd.DataFrame):
        source = source or "confounds"
        table = confounds
    elif isinstance(confounds, np.ndarray):
        source = source or "confounds"
        table = None
        if columns is not None:
            raise InputError(
                f"confounds {source}: columns={list(columns)} but an array has no column names; "
                "pass a DataFrame or a file, or select the array's columns yourself"
            )
    else:
        raise InputError(
            f"confounds of type {type(confounds).__name__}: pass a numpy array, a pandas "
            "DataFrame, or the path of a TSV/CSV file"
        )

    if table is not None:
        if columns is not None:
            if isinstance(columns, str):
                columns = [columns]
            table = _select(table, columns, source)
        non_numeric = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
        if non_numeric:
            raise InputError(
                f"confounds {source}: columns {non_numeric} are not numeric; select numeric "
                "columns with confounds_columns=[...] (on the command line: --confounds-columns)"
            )
        names = [str(c) for c in table.columns]
        values = np.array(table.to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
    else:
        names = None
        values = np.asarray(confounds)
        if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
            raise InputError(f"confounds {source}: array of dtype {values.dtype}, must be numbers")
        values = np.array(values, dtype=np.float64, copy=True)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise InputError(
                f"confounds {source}: array of shape {values.shape}, must be (n_scans, n_confounds)"
            )

    if values.shape[0] != int(n_scans):
        raise InputError(
            f"confounds {source}: have {values.shape[0]} rows but the run has {int(n_scans)} "
            "time points; pass the confounds of this run (one row per volume)"
        )
    if values.shape[0] > 1:
        # fMRIPrep's derivatives are n/a at the first volume: take the second's, as nilearn does
        first_nan = np.isnan(values[0])
        values[0, first_nan] = values[1, first_nan]
    bad = ~np.isfinite(values)
    if bad.any():
        cols = np.unique(np.nonzero(bad)[1])
        shown = [names[c] for c in cols] if names is not None else cols.tolist()
        rows = np.unique(np.nonzero(bad)[0])[:10].tolist()
        raise InputError(
            f"confounds {source}: missing or infinite values in columns {shown} (rows {rows}); "
            "only the first row of derivative columns may be n/a. Drop those columns or fill them"
        )
    logger.debug("load_confounds: %s -> %s", source, values.shape)
    return values
