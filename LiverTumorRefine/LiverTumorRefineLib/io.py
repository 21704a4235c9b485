"""Reading and writing volumes with SimpleITK, keeping geometry, and putting masks on the CT grid."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
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


def scalar_image(image: sitk.Image, name: str = "The image") -> sitk.Image:
    """``image`` if it is a scalar 2D or 3D image; a 4D image holding one volume as that volume;
    else a RefineError naming the problem and the fix."""
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise RefineError(f"{name} has {components} components per voxel (a vector or RGB image): give a scalar, "
                          "grey-level CT or label mask (extract one component first).")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    if image.GetDimension() not in (2, 3):
        size = " x ".join(str(n) for n in image.GetSize())
        raise RefineError(f"{name} is {image.GetDimension()}D ({size} voxels): give a single 3D volume "
                          "(extract one time point or channel of a 4D series first).")
    return image


def as_3d(image: sitk.Image) -> sitk.Image:
    """A scalar image as a 3D one (a 2D image becomes one slice)."""
    image = scalar_image(image)
    return sitk.JoinSeries(image) if image.GetDimension() == 2 else image


def from_sitk(image: sitk.Image) -> Volume:
    """Volume from a scalar SimpleITK image (2D images become one slice)."""
    image = as_3d(image)
    geometry = Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))
    return Volume(sitk.GetArrayFromImage(image), geometry)


def read_image(path: str | os.PathLike) -> sitk.Image:
    if Path(path).is_dir():  # a DICOM CT series is given as its folder; pydicom/highdicom load only then
        from . import dicom

        return to_sitk(dicom.read_series(path).volume)
    path = Path(path)
    volume_suffix(path)
    if not path.is_file():
        raise RefineError(f"{path}: file not found.")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise RefineError(f"{path}: cannot be read as an image ({first[:160]}).") from None
    return scalar_image(image, str(path))


def orientation(direction: Iterable[float]) -> str:
    """The closest DICOM orientation code of a 3x3 direction, e.g. "LPS" for axial slices."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(d) for d in direction])


def to_lps(image: sitk.Image) -> sitk.Image:
    """``image`` with its axes permuted and flipped (no resampling) to the closest LPS order, so
    that array axis 0 runs inferior-superior and patches are cut in axial planes."""
    image = as_3d(image)
    return image if orientation(image.GetDirection()) == "LPS" else sitk.DICOMOrient(image, "LPS")


def reoriented(volume: Volume, code: str) -> Volume:
    """``volume`` with its axes permuted and flipped (no resampling) to the DICOM orientation
    ``code`` (e.g. "LPS"); the same volume when it already has it."""
    if orientation(volume.geometry.direction) == code:
        return volume
    return from_sitk(sitk.DICOMOrient(to_sitk(volume), code))


def axial_arrays(image: np.ndarray, mask: np.ndarray | None, spacing_zyx: Sequence[float], direction: Sequence[float]
                 ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float], Callable[[np.ndarray], np.ndarray]]:
    """``image`` and ``mask`` (z, y, x arrays of a grid with the 3x3 ``direction``, LPS, row-major as
    SimpleITK stores it) reordered by axis permutation and flips (no resampling) so that axis 0 runs
    inferior-superior, as the engine's axial patches need; with their spacing and a function that
    puts a bool result array computed on them back in the original array order. Axial input is
    returned as is; a ``mask`` of None (only the image is needed) stays None."""
    geometry = Geometry(tuple(float(s) for s in reversed(tuple(spacing_zyx))), (0.0, 0.0, 0.0),
                        tuple(float(d) for d in direction))
    code = orientation(geometry.direction)
    if code == "LPS":  # the usual case: no copies
        return image, mask, geometry.spacing_zyx, lambda result: result
    lps_image = reoriented(Volume(np.asarray(image), geometry), "LPS")
    lps_mask = None if mask is None else reoriented(Volume(np.asarray(mask, dtype=np.uint8), geometry), "LPS").array.astype(bool)

    def back(result: np.ndarray) -> np.ndarray:
        return reoriented(Volume(np.asarray(result, dtype=np.uint8), lps_image.geometry), code).array.astype(bool)

    return lps_image.array, lps_mask, lps_image.geometry.spacing_zyx, back


def read_geometry(path: str | os.PathLike) -> tuple[Geometry, tuple[int, int, int]]:
    """Geometry and (z, y, x) shape of the 3D volume ``read_volume(path)`` gives, from the header only."""
    if Path(path).is_dir():  # a DICOM series folder: its slice headers
        from . import dicom

        series = dicom.read_series(path, pixels=False)
        return series.geometry, series.shape
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    size, spacing, origin = list(reader.GetSize()), list(reader.GetSpacing()), list(reader.GetOrigin())
    direction = np.array(reader.GetDirection()).reshape(dim, dim)
    if dim == 2:  # as sitk.JoinSeries places one slice
        size, spacing, origin = size + [1], spacing + [1.0], origin + [0.0]
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    size, spacing, origin, direction = size[:3], spacing[:3], origin[:3], direction[:3, :3]
    geometry = Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                        tuple(float(d) for d in direction.ravel()))
    return geometry, (size[2], size[1], size[0])


def back_on_grid(volume: Volume, image_path: str | os.PathLike) -> Volume:
    """``volume``, computed on ``to_lps`` of the image at ``image_path``, back on that file's own grid
    (array order, spacing, origin and direction), to be written beside it."""
    geometry, shape = read_geometry(image_path)
    array = reoriented(volume, orientation(geometry.direction)).array
    if array.shape != shape:
        raise RuntimeError(f"the result {array.shape} does not map back onto {image_path} {shape}")  # a bug
    return Volume(array, geometry)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI, NRRD or MHA volume with its geometry."""
    return from_sitk(read_image(path))


def write_volume(volume: Volume, path: str | os.PathLike, force: bool = False) -> None:
    """Write ``volume`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    suffix = volume_suffix(path)
    if path.exists() and not force:
        raise RefineError(f"{path} already exists: choose another output or pass --force.")
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(to_sitk(volume), tmp, useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], force: bool) -> Path:
    """Refuse, before any work, outputs that would clobber an input or an existing file, or
    that cannot be written."""
    out = Path(out)
    volume_suffix(out)
    for source in inputs:
        if source is not None and Path(source).exists() and out.exists() and os.path.samefile(out, source):
            raise RefineError(f"Output {out} is one of the inputs: choose another output path.")
    if out.is_dir():
        raise RefineError(f"Output {out} is a folder: give a file name such as {out / 'refined.nii.gz'}.")
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
