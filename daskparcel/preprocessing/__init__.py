"""Preprocessing as dask graphs: masks, smoothing, cleaning, confounds, and the voxel-major signals store."""
