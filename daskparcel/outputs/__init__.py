"""What a fit leaves behind: the fit folder (:mod:`.results`), its record (:mod:`.record`, behind fit.json),
the report and its figures (:mod:`.report`, :mod:`.plotting`), and the formats other tools read: BIDS atlas
derivatives (:mod:`.bids`), parcel time series and connectomes (:mod:`.connectomes`), NIfTI-Zarr
(:mod:`.nifti_zarr`)."""
