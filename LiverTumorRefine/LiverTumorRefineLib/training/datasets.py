"""Real CT with liver-tumour labels as ``Case``s: LiTS, MSD Task03_Liver, phantom folders, and
LiTS case 117 from a PyPI wheel.

Every reader returns the image as float32 HU and the label as uint8 (0 background, 1 liver,
2 tumour) on the image's grid, reoriented (axes permuted and flipped, never resampled) to the
orientation closest to LPS: array axes (z, y, x) run superior, posterior and to the patient's
left, so axial slices are ``array[k]`` with anterior up. Folder readers load one case at a time,
since a LiTS volume takes hundreds of megabytes.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.labels import names_a_tumour
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.training.phantom import Case
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

LITS117_REQUIREMENT = "liver-ct-segmentation-package==1.6.0"
LITS117_WHEEL = "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
LITS117_PACKAGE = "liver_ct_segmentation_package"
LITS117_FILES = ("img_117.mrc", "lab_117.mrc")
LITS117_SPACING = (1.5, 1.5, 1.5)  # nominal, see load_lits117

LAYOUTS = ("LiTS (volume-N.nii[.gz] + segmentation-N.nii[.gz]), "
           "MSD Task03_Liver (imagesTr/liver_N.nii.gz + labelsTr/liver_N.nii.gz) or "
           "phantom (<name>_ct.nii.gz + <name>_label.nii.gz)")

Pair = tuple[str, Path, Path]  # case name, CT, label


def read_oriented(path: str | os.PathLike) -> Volume:
    """Read a volume and reorient it, without resampling, to the orientation closest to LPS."""
    return io.from_sitk(sitk.DICOMOrient(io.read_image(path), "LPS"))


def read_case(name: str, ct_path: str | os.PathLike, label_path: str | os.PathLike) -> Case:
    """A case from a CT and a 0/1/2 label file; the label is put on the CT's grid if it differs."""
    image = read_oriented(ct_path)
    label = io.from_sitk(io.resample_mask_to(sitk.DICOMOrient(io.read_image(label_path), "LPS"), io.to_sitk(image)))
    values = label.array
    fractional = np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.rint(values))
    if values.min() < 0 or values.max() > 2 or fractional:
        raise RefineError(f"{label_path}: label values must be 0 (background), 1 (liver) and 2 (tumour).")
    return Case(name, Volume(image.array.astype(np.float32, copy=False), image.geometry),
                Volume(values.astype(np.uint8), image.geometry))


def _numbered(folder: Path, prefix: str, sep: str) -> dict[int, Path]:
    """Files ``<prefix><sep>N.nii[.gz]`` by N (macOS ``._`` copies do not match)."""
    pattern = re.compile(rf"^{re.escape(prefix + sep)}(\d+)\.nii(?:\.gz)?$")
    found: dict[int, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = pattern.match(path.name)
            if match and path.is_file():
                found.setdefault(int(match[1]), path)
    return found


def _pairs_by_id(images: dict[int, Path], labels: dict[int, Path], name: str,
                 ids: Iterable[int] | None, where: Path) -> list[Pair]:
    """Cases that have both files; requested ids that lack one are an error."""
    if ids is None:
        chosen = sorted(set(images) & set(labels))
    else:
        chosen = [int(i) for i in ids]
        missing = [i for i in chosen if i not in images or i not in labels]
        if missing:
            raise RefineError(f"{where}: no CT and label pair for id(s) {', '.join(map(str, missing))}.")
    return [(name.format(i), images[i], labels[i]) for i in chosen]


def _lits_pairs(folder: Path, ids: Iterable[int] | None = None) -> list[Pair]:
    return _pairs_by_id(_numbered(folder, "volume", "-"), _numbered(folder, "segmentation", "-"),
                        "volume-{}", ids, folder)


def _msd_pairs(folder: Path, ids: Iterable[int] | None = None) -> list[Pair]:
    return _pairs_by_id(_numbered(folder / "imagesTr", "liver", "_"), _numbered(folder / "labelsTr", "liver", "_"),
                        "liver_{}", ids, folder)


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _phantom_pairs(folder: Path) -> list[Pair]:
    pairs = []
    for ct in folder.iterdir():
        match = re.match(r"^(?!\._)(.+)_ct\.nii(\.gz)?$", ct.name)
        if not match:
            continue
        label = next((p for p in (folder / f"{match[1]}_label.nii.gz", folder / f"{match[1]}_label.nii") if p.is_file()), None)
        if label is not None:
            pairs.append((match[1], ct, label))
    return sorted(pairs, key=lambda pair: _natural_key(pair[0]))


def _read_pairs(pairs: list[Pair]) -> Iterator[Case]:
    for name, ct, label in pairs:
        yield read_case(name, ct, label)


def _existing_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise RefineError(f"{path} is not a folder; expected a dataset folder in {LAYOUTS} layout.")
    return path


def iter_lits(folder: str | os.PathLike, ids: Iterable[int] | None = None) -> Iterator[Case]:
    """LiTS cases ``volume-N`` from ``volume-N.nii[.gz]`` and ``segmentation-N.nii[.gz]`` in
    ``folder`` (all pairs, by N, or the given ``ids``). Volumes without a segmentation, like the
    LiTS test set, are skipped. Files are checked now and read as the iterator advances."""
    path = _existing_folder(folder)
    pairs = _lits_pairs(path, ids)
    if not pairs:
        raise RefineError(f"No volume-N.nii[.gz] with segmentation-N.nii[.gz] in {path}.")
    return _read_pairs(pairs)


def iter_msd(folder: str | os.PathLike, ids: Iterable[int] | None = None) -> Iterator[Case]:
    """Medical Segmentation Decathlon Task03_Liver cases ``liver_N`` from ``imagesTr/`` and
    ``labelsTr/`` under ``folder`` (all, by N, or the given ``ids``); read lazily like iter_lits."""
    path = _existing_folder(folder)
    pairs = _msd_pairs(path, ids)
    if not pairs:
        raise RefineError(f"No imagesTr/liver_N.nii.gz with labelsTr/liver_N.nii.gz under {path}.")
    return _read_pairs(pairs)


def find_cases(spec: str) -> Iterator[Case]:
    """The cases a data spec names: ``lits117``, ``dicomseg:<folder>`` (see ``iter_dicomseg``),
    or a folder in LiTS, MSD Task03_Liver or phantom layout (detected in that order). The layout
    is checked now; folder cases are read one at a time as the iterator advances (``list()`` it
    for small sets)."""
    if spec.strip().lower() == "lits117":
        return iter([load_lits117()])
    if spec.startswith(DICOMSEG_PREFIX):
        return iter_dicomseg(spec[len(DICOMSEG_PREFIX):])
    path = _existing_folder(spec)
    for detect in (_lits_pairs, _msd_pairs, _phantom_pairs):
        pairs = detect(path)
        if pairs:
            return _read_pairs(pairs)
    raise RefineError(f"No cases found in {path}: expected a folder in {LAYOUTS} layout, or 'lits117'.")


# --------------------------------------------------------------------------------------------
# DICOM: CT series folders with DICOM SEG or RT structure set liver and tumour segments

DICOMSEG_PREFIX = "dicomseg:"
DICOMSEG_LAYOUT = ("<folder>/<case>/ (the CT series' slice files) with <folder>/<case>*.dcm beside it: DICOM SEG "
                   "or RT structure set files holding a liver and a tumour segment (one file with both, or e.g. "
                   "<case>_Liver.dcm and <case>_Tumor.dcm)")
LIVER_WORDS = ("liver",)


def _segment_role(label: str, file_name: str, only_segment: bool) -> str | None:
    """"liver", "tumour" or None for a segment, from its label, else (a file's only segment) from
    the file name such as ``<case>_ManualROI_Tumor.dcm``."""
    for text in (label.lower(), file_name.lower() if only_segment else ""):
        if names_a_tumour(text):
            return "tumour"
        if any(word in text for word in LIVER_WORDS):
            return "liver"
    return None


def read_dicom_case(name: str, series_folder: str | os.PathLike, seg_paths: Iterable[str | os.PathLike]) -> Case:
    """A case from a CT series folder and DICOM SEG or RT structure set files holding its liver and
    tumour segments (found by segment or structure name, or by file name for single-segment
    files): label 1 liver, 2 tumour (the tumour overrides the liver), on the CT grid, both
    reoriented to the closest LPS order without resampling, like ``read_oriented``."""
    from LiverTumorRefineLib.volume import dicom, rtstruct

    seg_paths = [Path(p) for p in seg_paths]
    series = dicom.read_series(series_folder)
    image, frame = series.volume, dicom.frame_of_reference(series)
    label = np.zeros(image.array.shape, dtype=np.uint8)
    masks: dict[str, np.ndarray] = {}
    for path in seg_paths:
        structure_set = rtstruct.read_structure_set(path) if rtstruct.is_rtstruct(path) else None  # read once
        names = (rtstruct.structure_names(structure_set, path) if structure_set is not None
                 else dicom.segment_names(dicom.read_seg_header(path)))
        for number, segment in names.items():
            role = _segment_role(segment, Path(path).name, len(names) == 1)
            if role is None:
                continue
            if structure_set is not None:
                filled = rtstruct.structure_on(structure_set, path, io.to_sitk(image), number, frame)
                mask = sitk.GetArrayFromImage(filled).astype(bool)
            else:
                mask = dicom.read_seg_on(path, image, number).array.astype(bool)
            masks[role] = masks[role] | mask if role in masks else mask
    missing = [role for role in ("liver", "tumour") if role not in masks]
    if missing:
        raise RefineError(f"{name}: no {' or '.join(missing)} segment in its DICOM SEG or RT structure set files "
                          f"({', '.join(str(p) for p in seg_paths) or 'none'}); segments need labels (or single-"
                          "segment file names) containing 'liver' and 'tumor'/'tumour'/'lesion' (or starting with 'GTV').")
    label[masks["liver"]] = 1
    label[masks["tumour"]] = 2
    oriented = io.reoriented(image, "LPS")
    return Case(name, Volume(oriented.array.astype(np.float32, copy=False), oriented.geometry),
                io.reoriented(image.with_array(label), "LPS"))


def _dicomseg_pairs(folder: Path) -> list[tuple[str, Path, list[Path]]]:
    cases = []
    for series in sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: _natural_key(p.name)):
        segs = sorted(p for p in folder.glob(f"{glob.escape(series.name)}*.dcm") if p.is_file())
        if segs:
            cases.append((series.name, series, segs))
    return cases


def iter_dicomseg(folder: str | os.PathLike) -> Iterator[Case]:
    """Cases in the ``dicomseg:<folder>`` layout: every CT series sub-folder ``<case>/`` that has
    DICOM SEG files ``<case>*.dcm`` beside it (see ``DICOMSEG_LAYOUT``); read lazily."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise RefineError(f"{path} is not a folder; dicomseg: expects {DICOMSEG_LAYOUT}.")
    cases = _dicomseg_pairs(path)
    if not cases:
        raise RefineError(f"No DICOM cases in {path}: expected {DICOMSEG_LAYOUT}.")
    return (read_dicom_case(name, series, segs) for name, series, segs in cases)


# --------------------------------------------------------------------------------------------
# LiTS case 117 from the liver-ct-segmentation-package wheel


def cache_dir() -> Path:
    """Where downloaded data is kept: ``$XDG_CACHE_HOME/livertumorrefine`` or
    ``~/.cache/livertumorrefine``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "livertumorrefine"


def fetch_lits117() -> Path:
    """The ``liver-ct-segmentation-package`` 1.6.0 wheel (4.5 MB) in ``cache_dir()``, downloaded
    with pip on first use. Only the wheel is fetched (``--no-deps``): its own dependency pins are
    years old and not needed to read the data. RefineError when pip cannot get it (offline)."""
    wheel = cache_dir() / LITS117_WHEEL
    if wheel.is_file():
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", LITS117_REQUIREMENT, "-d", str(wheel.parent)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        problem = (result.stderr.strip().splitlines() or ["pip failed"])[-1] if result.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem or not wheel.is_file():
        raise RefineError(f"Could not download {LITS117_REQUIREMENT} with pip ({problem[:200] or 'no wheel'}). "
                          f"When online, run: {sys.executable} -m pip download --no-deps {LITS117_REQUIREMENT} "
                          f"-d {wheel.parent}; or pass the .whl file.")
    return wheel


def load_lits117(wheel_or_dir: str | os.PathLike | None = None) -> Case:
    """LiTS case 117 as shipped in ``liver-ct-segmentation-package`` 1.6.0 (case ``lits117``).

    Source: ``wheel_or_dir`` when given (the .whl, the unpacked package, its ``data`` folder or
    a folder holding the wheel); otherwise the installed package, else the wheel in
    ``cache_dir()``, downloaded there by ``fetch_lits117`` if missing. Reading needs ``mrcfile``.

    The package holds a 128^3 crop of the volume, 2x mean-downsampled, as MRC arrays without
    spacing, indexed (patient right to left, anterior to posterior, inferior to superior); they
    are transposed to (z, y, x) = (superior, posterior, left), which is LPS with identity
    direction. Spacing is a nominal 1.5 mm isotropic: the anatomy is isotropic at equal voxel
    steps (vertebrae repeat every 21 voxels, about 32 mm for T12-L2 at 1.5 mm; vertebral bodies
    are about 29 voxels, 44 mm, wide), which fits a thin-slice scan of about 0.75 mm voxels
    (typical LiTS in-plane spacing, 2x downsampled). The crop then spans 192 mm, the liver's
    full height. Origin is 0.
    """
    mrcfile = _import_mrcfile()
    with tempfile.TemporaryDirectory(prefix="lits117-") as scratch:
        data_dir = _lits117_data_dir(wheel_or_dir, Path(scratch))
        image, label = (_read_mrc(mrcfile, data_dir / name) for name in LITS117_FILES)
    if image.shape != label.shape or image.ndim != 3 or label.max() > 2:
        raise RefineError(f"{data_dir}: {LITS117_FILES} are not the LiTS 117 image and 0/1/2 label of "
                          f"{LITS117_REQUIREMENT}.")
    geometry = Geometry(spacing=LITS117_SPACING)
    to_zyx = (2, 1, 0)
    return Case("lits117", Volume(np.ascontiguousarray(image.transpose(to_zyx), dtype=np.float32), geometry),
                Volume(np.ascontiguousarray(label.transpose(to_zyx), dtype=np.uint8), geometry))


def _import_mrcfile():  # noqa: ANN202 - the module
    try:
        import mrcfile
    except ImportError:
        raise RefineError("Reading LiTS 117 needs the mrcfile package: pip install mrcfile") from None
    return mrcfile


def _read_mrc(mrcfile, path: Path) -> np.ndarray:  # noqa: ANN001 - the module
    try:
        with mrcfile.open(str(path), permissive=True) as mrc:
            if mrc.data is None:
                raise ValueError("no data block")
            return np.array(mrc.data)
    except (OSError, ValueError) as exc:
        raise RefineError(f"{path}: cannot be read as MRC ({exc}).") from None


def _has_data(folder: Path) -> bool:
    return all((folder / name).is_file() for name in LITS117_FILES)


def _lits117_data_dir(source: str | os.PathLike | None, scratch: Path) -> Path:
    """The folder holding the two MRC files, extracting them from a wheel into ``scratch``."""
    if source is None:
        spec = importlib.util.find_spec(LITS117_PACKAGE)
        installed = [Path(p) / "data" for p in (spec.submodule_search_locations or [])] if spec else []
        found = next((d for d in installed if _has_data(d)), None)
        return found if found is not None else _extract(fetch_lits117(), scratch)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".whl":
        return _extract(path, scratch)
    if path.is_dir():
        for folder in (path, path / "data", path / LITS117_PACKAGE / "data"):
            if _has_data(folder):
                return folder
        if (path / LITS117_WHEEL).is_file():
            return _extract(path / LITS117_WHEEL, scratch)
    raise RefineError(f"{path}: no LiTS 117 data ({' and '.join(LITS117_FILES)}) there; give the "
                      f"{LITS117_WHEEL} file or the folder of the unpacked package.")


def _extract(wheel: Path, scratch: Path) -> Path:
    members = [f"{LITS117_PACKAGE}/data/{name}" for name in LITS117_FILES]
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                (scratch / Path(member).name).write_bytes(archive.read(member))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise RefineError(f"{wheel}: not a readable {LITS117_REQUIREMENT} wheel ({exc}).") from None
    return scratch
