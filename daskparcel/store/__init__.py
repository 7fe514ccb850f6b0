"""The stores: run and cohort stores (:mod:`.runs`) and the signals store, the pipeline's cache
(:mod:`.signals`). Both are zarr v3 groups whose ``daskparcel`` attribute says what they hold."""

from daskparcel.store.runs import open_store, to_nifti

__all__ = ["open_store", "to_nifti"]
