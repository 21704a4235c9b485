"""Reading and writing volumes with SimpleITK, keeping geometry, and putting masks on the CT grid."""
from __future__ import annotations

import itertools
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.volume.atomic import atomic_files, atomic_path
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
TWO_FILE_SUFFIXES = (".nhdr", ".mhd")  # a header plus a separate data file


def volume_suffix(path: str | os.PathLike) -> str:
    """The recognised suffix of ``path`` or a RefineError listing the supported ones."""
    name = str(path).lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise RefineError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}.")


def is_dicom_file(path: Path) -> bool:
    """A file holding a DICOM dataset: its name ends in .dcm, or it has the "DICM" marker after the
    128-byte preamble (DICOM files often have no suffix)."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_series(path: str | os.PathLike) -> bool:
    """A DICOM CT as it is given here: the folder of a series, or one file of it (which stands for its
    whole series, read from its folder)."""
    path = Path(path)
    return path.is_dir() or is_dicom_file(path)


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


def readable_file(path: str | os.PathLike, what: str = "File") -> Path:
    """``path`` if it is a readable file; else a RefineError saying whether it is missing, a
    folder or not readable (permissions), and what to do."""
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise RefineError(f"{what} {str(path)[:80]}: cannot be opened ({exc.strerror}).") from None
    if not exists:
        raise RefineError(f"{what} {path}: file not found. Check the path.")
    if is_dir:
        raise RefineError(f"{what} {path} is a folder, not a file: give the file inside it.")
    if not os.access(path, os.R_OK):
        raise RefineError(f"{what} {path} exists but is not readable (permissions): make it readable "
                          f"(chmod u+r) or copy it somewhere you can read.")
    return path


NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32, float64


def _nifti_layout(head: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(voxel data offset, voxel data bytes, numpy dtype when the voxels are floats) from the start
    of a NIfTI-1 or NIfTI-2 file, or None when the header is not one."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        count = 1
        for n in dims[1:1 + max(0, min(int(dims[0]), 7))]:
            count *= max(int(n), 1)
        dtype = np.dtype(endian + NIFTI_FLOATS[datatype]) if datatype in NIFTI_FLOATS else None
        return max(offset, 348), count * max(int(bitpix), 8) // 8, dtype
    return None


def check_complete(path: str | os.PathLike) -> tuple[int, int]:
    """Refuse a NIfTI file whose gzip stream is corrupt (CRC error, cut short) or that holds fewer
    voxel bytes than its header describes: SimpleITK would read the missing part as zeros. Returns
    (NaN voxels, voxels) of a float NIfTI, which SimpleITK also reads as zeros; (0, 0) otherwise.
    (NRRD and MetaImage readers already refuse short data.)"""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return 0, 0
    nans = 0
    try:
        chunks = file_bytes(path, compressed=name.endswith(".gz"))
        head = _read_at_least(chunks, b"", 540)
        layout = _nifti_layout(head[:540])
        if layout is None:
            chunks.close()
            return 0, 0
        offset, size, dtype = layout
        head = _read_at_least(chunks, head, offset)  # header extensions may follow the 540 bytes
        length, pending, left = len(head), head[offset:], size  # pending: voxel bytes not yet scanned
        for chunk in itertools.chain([b""], chunks):  # b"": the voxel bytes read with the header come first
            length += len(chunk)
            if dtype is not None and left > 0:
                pending += chunk
                usable = min(len(pending) - len(pending) % dtype.itemsize, left)
                nans += int(np.count_nonzero(np.isnan(np.frombuffer(pending[:usable], dtype))))
                pending, left = pending[usable:], left - usable
    except (OSError, EOFError, zlib.error) as exc:
        raise RefineError(f"{path} is damaged: its compressed data is corrupt or cut short ({exc}). It was "
                          "probably truncated in transfer or by a full disk: copy or export it again.") from None
    if length < offset + size:
        raise RefineError(f"{path} is truncated: its header describes {size} bytes of voxels but only "
                          f"{max(0, length - offset)} are there. Copy or export it again.")
    return (nans, size // dtype.itemsize) if dtype is not None else (0, 0)


def _read_at_least(chunks: Iterator[bytes], data: bytes, n: int) -> bytes:
    """``data`` followed by chunks until it holds at least ``n`` bytes (or the chunks end)."""
    while len(data) < n:
        chunk = next(chunks, None)
        if chunk is None:
            break
        data += chunk
    return data


GZIP_BLOCK = 1 << 22  # compressed bytes read at a time
OUT_BLOCK = 1 << 24  # bytes handed on at a time


def file_bytes(path: str | os.PathLike, compressed: bool) -> Iterator[bytes]:
    """The bytes of a file, decompressed when it is gzip: large blocks straight through zlib,
    which releases the GIL while it inflates (so a read overlaps the model load, see
    ``pipeline.read_while_loading``), checking each gzip member's CRC-32 and length as the gzip
    module does. Raises ``zlib.error`` or ``EOFError`` when the data is corrupt or cut short."""
    with open(path, "rb") as stream:
        if not compressed:
            yield from iter(lambda: stream.read(OUT_BLOCK), b"")
            return
        inflate, fed, members = zlib.decompressobj(16 + zlib.MAX_WBITS), False, 0
        for block in iter(lambda: stream.read(GZIP_BLOCK), b""):
            while True:
                if not fed and members:
                    block = block.lstrip(b"\0")  # zero padding after a member, which gzip allows
                if not fed and not block:
                    break
                fed = True
                try:
                    out = inflate.decompress(block, OUT_BLOCK)
                except zlib.error as exc:
                    raise zlib.error(f"corrupt data or CRC check failed: {exc}") from None
                if out:
                    yield out
                if inflate.eof:  # a member ended: another may follow
                    block, members = inflate.unused_data, members + 1
                    inflate, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                elif inflate.unconsumed_tail or len(out) == OUT_BLOCK:
                    block = inflate.unconsumed_tail  # more output from what was read
                else:
                    break
        if fed or not members:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """A scalar image from a volume file (checked readable and complete) or a DICOM series (its
    folder, or one of its files)."""
    if is_dicom_series(path):  # pydicom/highdicom load only then
        from LiverTumorRefineLib.volume import dicom

        return to_sitk(dicom.read_series(path).volume)
    path = Path(path)
    volume_suffix(path)
    readable_file(path)
    nans, voxels = check_complete(path)
    if voxels and nans == voxels:
        raise RefineError(f"{path}: every voxel is NaN (not a number), so the file holds no image: export it again.")
    if nans:
        warnings.warn(f"{path}: {nans} of {voxels} voxels are NaN (not a number); they are read as 0.", UserWarning,
                      stacklevel=2)
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
    ``code`` (e.g. "LPS"); the same volume when it already has it. A bool mask stays bool (it goes
    through SimpleITK, which has no bool pixels, as a uint8 view: no copy)."""
    if orientation(volume.geometry.direction) == code:
        return volume
    if volume.array.dtype == bool:
        turned = reoriented(volume.with_array(volume.array.view(np.uint8)), code)
        return turned.with_array(turned.array.view(bool))
    return from_sitk(sitk.DICOMOrient(to_sitk(volume), code))


def read_geometry(path: str | os.PathLike) -> tuple[Geometry, tuple[int, int, int]]:
    """Geometry and (z, y, x) shape of the 3D volume ``read_volume(path)`` gives, from the header only."""
    if is_dicom_series(path):  # a DICOM series: its slice headers
        from LiverTumorRefineLib.volume import dicom

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


def exists_error(path: str | os.PathLike) -> RefineError:
    """The refusal to overwrite an existing output, worded for the API and for the CLI."""
    return RefineError(f"{path} already exists: choose another output, or pass force=True to overwrite it.",
                       cli=f"{path} already exists: choose another output or pass --force.")


def verify_written(written: str | os.PathLike, volume: Volume, target: str | os.PathLike) -> None:
    """Read back a just-written volume file and refuse it unless voxels and grid are what was
    written (a full disk can leave a short file without any write error)."""
    try:
        check_complete(written)
        back = from_sitk(sitk.ReadImage(str(written)))
        expected = np.asarray(volume.array)
        if np.issubdtype(expected.dtype, np.floating):  # NIfTI reads NaN back as 0
            expected, got = np.nan_to_num(expected, nan=0.0), np.nan_to_num(back.array, nan=0.0)
        else:
            got = back.array
        same = (got.shape == expected.shape and back.geometry.same_grid(volume.geometry, tol=1e-4)
                and np.array_equal(got, expected))
        problem = "" if same else "the file read back differs from what was written"
    except (RefineError, RuntimeError):
        problem = "the file read back is incomplete or unreadable"
    if problem:
        raise RefineError(f"Writing {target} failed ({problem}): is the disk full? Free some space or choose "
                          "another folder; nothing was written.")


def write_volume(volume: Volume, path: str | os.PathLike, force: bool = False) -> None:
    """Write ``volume`` atomically: to a temporary file in the same folder (a header and data
    file pair for .nhdr/.mhd, renamed as a pair), verified by reading it back, then renamed."""
    path = Path(path)
    suffix = volume_suffix(path)
    if path.exists() and not force:
        raise exists_error(path)
    with (atomic_files(path) if suffix in TWO_FILE_SUFFIXES else atomic_path(path, suffix)) as tmp:
        try:
            sitk.WriteImage(to_sitk(volume), tmp, useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "write error"
            raise RefineError(f"Writing {path} failed ({reason}): is the disk full? Free some space or choose "
                              "another folder; nothing was written.") from None
        verify_written(tmp, volume, path)


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], force: bool,
                 suffixes: Sequence[str] | None = None) -> Path:
    """Refuse, before any work, outputs that would clobber an input or an existing file, or
    that cannot be written. ``suffixes``: the allowed file types (default: volume files)."""
    out = Path(out)
    if suffixes is None:
        volume_suffix(out)
    elif not str(out).lower().endswith(tuple(suffixes)):
        raise RefineError(f"{out}: unsupported file type for this output; give a name ending in {', '.join(suffixes)}.")
    for source in inputs:
        if source is not None and Path(source).exists() and out.exists() and os.path.samefile(out, source):
            raise RefineError(f"Output {out} is one of the inputs: choose another output path.")
    if out.is_dir():
        example = out / ("refined.nii.gz" if suffixes is None else f"out{suffixes[0]}")
        raise RefineError(f"Output {out} is a folder: give a file name such as {example}.")
    if out.exists() and not force:
        raise exists_error(out)
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
    moved = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    if not sitk.GetArrayViewFromImage(moved).any() and sitk.GetArrayViewFromImage(mask).any():
        raise RefineError("The mask's labelled voxels all lie outside the CT (its box overlaps the CT's, but its "
                          "voxels do not: different origin or orientation): check that they belong to the same scan.")
    return moved
