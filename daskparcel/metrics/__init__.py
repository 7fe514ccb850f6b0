"""Quality of a parcellation.

Thirion et al. (2014, "Which fMRI clustering gives good brain parcellations?") compare parcellations
by how well they fit the data, their reproducibility and their shape; ReNA (Hoyos-Idrobo et al. 2018)
by how well parcel means approximate the voxels. This module gives:

* :func:`compression_r2`, :func:`r2_per_parcel`, :func:`r2_map`: variance of the voxel signals
  explained by their parcel means, lazily over the signals;
* :func:`homogeneity`: resting-state homogeneity (Schaefer et al. 2018, Gordon et al. 2016), the
  size-weighted mean correlation of the voxels within each parcel, in one streaming read;
* :func:`parcel_sizes`: size balance (sizes, coefficient of variation, largest, singletons);
* :func:`contiguity`: fraction of parcels that are one connected region (6-connectivity);
* :func:`adjusted_rand`: agreement of two parcellations (split-half reproducibility, or accuracy
  against a planted ground truth), and :func:`split_half_reproducibility`;
* :func:`stability`: reproducibility (ARI / AMI across bootstrap samples of subjects or split halves of
  time) and held-out accuracy, for one or several K (Thirion et al. 2014).

Labels follow the image convention: ``1..K`` for parcels, ``0`` for voxels in no parcel.
"""

from daskparcel.metrics.labels import (
    Contiguity,
    ParcelSizes,
    adjusted_rand,
    contiguity,
    parcel_sizes,
    split_half_reproducibility,
)
from daskparcel.metrics.signals import compression_r2, homogeneity, r2_map, r2_per_parcel
from daskparcel.metrics.stability import stability

__all__ = [
    "Contiguity",
    "ParcelSizes",
    "adjusted_rand",
    "compression_r2",
    "contiguity",
    "homogeneity",
    "parcel_sizes",
    "r2_map",
    "r2_per_parcel",
    "split_half_reproducibility",
    "stability",
]
