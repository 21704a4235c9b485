"""Reading and writing volumes with SimpleITK, keeping geometry, and putting masks on the CT grid."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from .errors import RefineError
from .volume import Geometry, Volume

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_suffix(path: str | os.PathLike) -> str:
    """The recognised suffix of ``path`` or a RefineError listing the supported ones."""
    name = str(path).lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise RefineError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}.")


def to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    return image


def from_sitk(image: sitk.Image) -> Volume:
    """Volume from a 3D scalar SimpleITK image (2D images become one slice)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise RefineError(f"The image has {image.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB): "
                          "give a scalar CT or mask.")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise RefineError(f"The image is {image.GetDimension()}D: give a 3D volume (split 4D series first).")
    geometry = Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))
    return Volume(sitk.GetArrayFromImage(image), geometry)


def read_image(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    volume_suffix(path)
    if not path.is_file():
        raise RefineError(f"{path}: file not found.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise RefineError(f"{path}: cannot be read as an image ({first[:160]}).") from None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI, NRRD or MHA volume with its geometry."""
    return from_sitk(read_image(path))


def write_volume(volume: Volume, path: str | os.PathLike, force: bool = False) -> None:
    """Write ``volume`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    suffix = volume_suffix(path)
    if path.exists() and not force:
        raise RefineError(f"{path} already exists: choose another output or pass --force.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        sitk.WriteImage(to_sitk(volume), tmp, useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], force: bool) -> Path:
    """Refuse, before any work, outputs that would clobber an input or an existing file, or
    that cannot be written."""
    out = Path(out)
    volume_suffix(out)
    for source in inputs:
        if source is not None and Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
            raise RefineError(f"Output {out} is one of the inputs: choose another output path.")
    if out.exists() and not force:
        raise RefineError(f"{out} already exists: choose another output or pass --force.")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise RefineError(f"Output folder {folder} does not exist: create it first.")
    if not os.access(folder, os.W_OK):
        raise RefineError(f"Output folder {folder} is not writable: choose another output path.")
    return out


def _physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (np.array(b) * size)])
               for b in np.ndindex(2, 2, 2)]
    corners = np.array(corners)
    half = np.abs(np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())).sum(axis=1) / 2
    return corners.min(0) - half, corners.max(0) + half


def resample_mask_to(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``mask`` on ``reference``'s grid (nearest neighbour); refuses masks that do not overlap it."""
    if (mask.GetSize() == reference.GetSize()
            and np.allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-4)
            and np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-4)
            and np.allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-4)):
        return mask
    lo_m, hi_m = _physical_box(mask)
    lo_r, hi_r = _physical_box(reference)
    if np.any(hi_m <= lo_r) or np.any(hi_r <= lo_m):
        raise RefineError("The mask does not overlap the CT in physical space (different origin or orientation): "
                          "check that they belong to the same scan.")
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
