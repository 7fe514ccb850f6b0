"""Parcels as features for machine learning (issue 22, item 5): ``transform`` of 3D maps gives a (n_maps, n_parcels)
array, so a ``Parcellations`` is the feature-reduction step of a scikit-learn ``Pipeline``."""

from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, real_scan
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from daskparcel import Parcellations
from daskparcel.errors import InputError

VALUES = np.array([3, 11, 12, 40, 41, 90])


def _maps() -> tuple[list[nib.Nifti1Image], nib.Nifti1Image]:
    """The 40 volumes of a real scan as 3D maps, and a gap-labelled atlas on their grid."""
    img = nib.load(real_scan("nitime1"))
    data = img.get_fdata(dtype=np.float32)
    maps = [nib.Nifti1Image(data[..., t], img.affine) for t in range(data.shape[3])]
    i, _, k = np.indices(data.shape[:3])
    labels = VALUES[((i * 3) // data.shape[0] * 2 + (k * 2) // data.shape[2]) % VALUES.size]
    labels[i == 0] = 0
    return maps, nib.Nifti1Image(labels.astype(np.int16), img.affine)


def _masker_features(labels_img: nib.Nifti1Image, maps: list[nib.Nifti1Image]) -> np.ndarray:
    """nilearn's parcel means of the maps (smoothed as ours, no cleaning)."""
    from nilearn.image import concat_imgs
    from nilearn.maskers import NiftiLabelsMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # nilearn's standardize=False deprecation
        masker = NiftiLabelsMasker(labels_img=labels_img, smoothing_fwhm=4.0)
        return masker.fit_transform(concat_imgs(maps))


@pytest.mark.real_data
def test_maps_are_features_equal_to_nilearn_parcel_means(tmp_path):
    maps, atlas = _maps()
    # the temporal cleaning of runs is not applied to maps (they are samples, not a time series)
    est = Parcellations.from_labels(
        atlas, smoothing_fwhm=4.0, standardize="zscore_sample", detrend=True
    )
    ref = _masker_features(atlas, maps)
    ours = est.transform(maps)
    assert isinstance(ours, np.ndarray) and ours.shape == (40, VALUES.size)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # maps given as files, and one 3D map alone, give the same rows
    paths = []
    for n, m in enumerate(maps[:3]):
        nib.save(m, tmp_path / f"map{n}.nii.gz")
        paths.append(tmp_path / f"map{n}.nii.gz")
    np.testing.assert_allclose(est.transform(paths), ours[:3], rtol=1e-5)
    np.testing.assert_allclose(est.transform([nib.load(p) for p in paths]), ours[:3], rtol=1e-5)
    np.testing.assert_allclose(est.transform(maps[1]), ours[1:2], rtol=1e-5)
    # a 4D image of maps with as_features=True: each volume a map
    four_d = real_scan("nitime1")
    np.testing.assert_allclose(est.transform(four_d, as_features=True), ours, rtol=1e-5)
    with pytest.raises(
        InputError, match=r"3D image"
    ):  # as_features=False: a 3D image is a run given by mistake
        est.transform(paths[0], as_features=False)


@pytest.mark.real_data
def test_a_pipeline_fits_the_parcellation_on_the_training_maps():
    maps, _ = _maps()
    y = np.tile([0, 1], 20)
    mask = nib.Nifti1Image(np.ones(maps[0].shape, np.int8), maps[0].affine)  # the crop is all brain
    est = Parcellations(
        method="kmeans", n_parcels=8, n_components=10, mask=mask, smoothing_fwhm=4.0
    )
    pipe = make_pipeline(est, StandardScaler(), LogisticRegression())
    scores = cross_val_score(pipe, maps, y, cv=2, error_score="raise")
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    # what the Pipeline does on its first step: fit on the maps, then their features
    features = est.fit_transform(maps, y)
    assert features.shape == (40, 8) and est.n_elements_ == 8
    np.testing.assert_allclose(
        features,
        _masker_features(est.labels_img_, maps),
        rtol=1e-4,
        atol=1e-4 * np.abs(features).max(),
    )


@pytest.mark.real_data
def test_a_frozen_atlas_is_the_same_features_in_every_fold():
    maps, atlas = _maps()
    est = Parcellations.from_labels(atlas, smoothing_fwhm=4.0)
    pipe = make_pipeline(FrozenEstimator(est), StandardScaler(), LogisticRegression())
    pipe.fit(maps[:30], np.tile([0, 1], 15))
    assert est.atlas_ is not None and est.n_parcels == VALUES.size  # not refitted
    assert pipe.predict(maps[30:]).shape == (10,)


@pytest.mark.real_data
def test_bad_maps_are_refused(tmp_path):
    maps, atlas = _maps()
    est = Parcellations.from_labels(atlas)
    with pytest.raises(InputError, match=r"confounds: given with maps .*pass confounds=None"):
        est.transform(maps[:2], confounds=np.zeros((2, 1)))
    other = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(
        InputError, match=r"imgs\[1\]: its grid \(4, 4, 4\) differs from imgs\[0\]'s"
    ):
        est.transform([maps[0], other])


def _readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading) :]
    match = re.search(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert match is not None, f"no python block under {heading}"
    return match.group(1)


def test_readme_decoding_example_parcels_beat_voxels(monkeypatch):
    """The README's example runs, and on its planted effect the parcels decode, the voxels barely."""
    namespace: dict[str, object] = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # nilearn's standardize=False deprecation
        exec(_readme_block("### Parcels as features"), namespace)
    on_parcels, on_voxels = namespace["on_parcels"], namespace["on_voxels"]
    assert on_parcels.mean() >= 0.85  # type: ignore[union-attr]
    assert on_parcels.mean() > on_voxels.mean() + 0.2  # type: ignore[union-attr,operator]
