"""daskparcel: out-of-core, distributed brain parcellations from fMRI.

The public API is re-exported here (see ``__all__``). Submodules are imported on first use so that
``import daskparcel`` stays fast and the CLI starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "InputError": "daskparcel.errors",
    "IncompleteStoreError": "daskparcel.errors",
    "StoreLockedError": "daskparcel.errors",
    "open_nifti": "daskparcel.ingest.nifti",
    "find_bids_runs": "daskparcel.ingest.bids",
    "gifti_run": "daskparcel.ingest.surface",
    "cifti_run": "daskparcel.ingest.cifti",
    "convert": "daskparcel.ingest.convert",
    "open_store": "daskparcel.store.runs",
    "to_nifti": "daskparcel.store.runs",
    "Parcellations": "daskparcel.estimator",
    "connectome": "daskparcel.outputs.connectomes",
    "to_nifti_zarr": "daskparcel.outputs.nifti_zarr",
    "open_nifti_zarr": "daskparcel.outputs.nifti_zarr",
    "connect": "daskparcel.runtime",
    "reduce": "daskparcel.reduction",
    "kmeans": "daskparcel.clustering.kmeans",
    "hierarchical_kmeans": "daskparcel.clustering.hierarchical_kmeans",
    "agglomerate": "daskparcel.clustering.agglomerative",
    "rena": "daskparcel.clustering.rena",
    "datasets": "daskparcel.datasets",
    "metrics": "daskparcel.metrics",
    "write_fit_outputs": "daskparcel.outputs.results",
    "plotting": "daskparcel.outputs.plotting",
    "parcel_means": "daskparcel.parcels",
    "compression_r2": "daskparcel.metrics",
    "parcel_sizes": "daskparcel.metrics",
    "contiguity": "daskparcel.metrics",
    "homogeneity": "daskparcel.metrics",
    "adjusted_rand": "daskparcel.metrics",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'daskparcel' has no attribute {name!r}")
    imported = importlib.import_module(module)
    # a module exported under its own name (metrics, plotting, datasets) or a name defined in it
    value = (
        getattr(imported, name, imported)
        if module.endswith(f".{name}")
        else getattr(imported, name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
