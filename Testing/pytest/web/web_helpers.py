"""Generated test data of the BrainFM Web tests: a head-like scan and tiny random-weight models."""
from __future__ import annotations

from pathlib import Path


def write_scan(path: Path, shape=(48, 56, 44), *, spacing=(1.2, 1.0, 1.1), seed: int = 0) -> Path:
    """A generated head-like scan (ellipsoid 'brain', bright core, dark ventricles), oblique affine."""
    import nibabel as nib

    from fixtures import affine, blob_head, rotation

    aff = affine(spacing, rot=rotation(2, 12), origin=(-28.0, -30.0, -22.0))
    vol = blob_head(shape, aff, seed=seed)
    nib.save(nib.Nifti1Image(vol.data, vol.affine), str(path))
    return path


def write_model(path: Path, *, f_maps: int = 8, num_levels: int = 3, seed: int = 4) -> Path:
    """A random-weight native model with a 33-class FreeSurfer segmentation head (fs33) and a T1 head."""
    from ckpt_factory import write_native

    _, weights, _ = write_native(path, f_maps=f_maps, num_levels=num_levels,
                                 heads={"T1": 1, "segmentation": 33}, seed=seed)
    return weights
