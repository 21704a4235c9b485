"""Benchmark cases shared by ``bench/heldout.py`` and ``bench/compare.py``.

* Held-out simulated cases: phantoms with seeds ``EVALUATION_PHANTOM_SEED`` + 0..N-1 (training
  uses 1000+, validation 50000+) and LiTS case 117, each with truth = label 2 and a coarse mask
  from ``simulate_coarse`` with the fixed seed ``seed + 7``. Nothing here feeds training.
* Real validation cases: ``realct_1720`` and ``realct_mip10`` (rebuilt by ``bench/realct.py``) and
  LiTS 117, with coarse masks from ``independent_coarse``: boundary errors drawn independently of
  the training simulator, so a model is not judged on the errors it was trained on.
* Given cases: (CT, truth, coarse) triplets on disk, as ``livertumorrefine demo`` writes them
  (``ct.nii.gz``, ``truth.nii.gz``, ``coarse.nii.gz`` in one folder).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverTumorRefine"))

from LiverTumorRefineLib.volume import io  # noqa: E402
from LiverTumorRefineLib.training.coarse_simulator import tumour_mask, simulate_coarse  # noqa: E402
from LiverTumorRefineLib.refine.boxes import component_labels  # noqa: E402
from LiverTumorRefineLib.errors import RefineError  # noqa: E402
from LiverTumorRefineLib.training.phantom import Case, make_phantom  # noqa: E402
from LiverTumorRefineLib.evaluate.qa import files_by_role  # noqa: E402
from LiverTumorRefineLib.training.case import RefineCase  # noqa: E402
from LiverTumorRefineLib.training.trainset import EVALUATION_PHANTOM_SEED  # noqa: E402

LITS117_SEED = 117  # the seed the coarse mask of LiTS 117 is simulated from (+ 7)


def heldout_cases(n_phantoms: int, lits: bool) -> Iterator[tuple[Case, int]]:
    """(case, seed): phantoms ``EVALUATION_PHANTOM_SEED + i`` for i < ``n_phantoms``, then LiTS 117."""
    for i in range(n_phantoms):
        case = make_phantom(EVALUATION_PHANTOM_SEED + i)
        yield case, EVALUATION_PHANTOM_SEED + i
    if lits:
        from LiverTumorRefineLib.training.datasets import load_lits117

        yield load_lits117(), LITS117_SEED


def simulated_coarse(truth: np.ndarray, spacing_zyx, seed: int, image: np.ndarray) -> np.ndarray:
    """The held-out coarse mask of a case: ``simulate_coarse`` with ``default_rng(seed + 7)``."""
    return simulate_coarse(truth, spacing_zyx, np.random.default_rng(seed + 7), image=image)


def simulated_cases(n_phantoms: int, lits: bool,
                    log: Callable[[str], None] = print) -> Iterator[tuple[Case, int, np.ndarray, np.ndarray]]:
    """(case, seed, truth, coarse) for the held-out cases; cases without tumour are skipped
    silently, cases whose coarse mask is empty with a message."""
    for case, seed in heldout_cases(n_phantoms, lits):
        truth = case.label.array == 2
        if not truth.any():
            continue
        coarse = simulated_coarse(truth, case.image.spacing_zyx, seed, case.image.array)
        if not coarse.any():
            log(f"{case.name}: coarse mask empty (all lesions missed); skipped")
            continue
        yield case, seed, truth, coarse


# ------------------------------------------------------------------------------ real validation cases
def real_cases(lits: bool = True) -> Iterator[Case]:
    """The two rebuilt real cases, then LiTS 117."""
    from realct import load_cases  # bench/realct.py: the rebuilt real cases in their cache

    yield from load_cases()
    if lits:
        from LiverTumorRefineLib.training.datasets import load_lits117

        yield load_lits117()


def independent_coarse(truth: np.ndarray, spacing_zyx: Sequence[float], seed: int) -> np.ndarray:
    """A coarse mask with boundary errors drawn independently of the training simulator."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing_zyx, float)
    labels = component_labels(truth)
    out = np.zeros(truth.shape, bool)
    margin = np.ceil(8.0 / spacing).astype(int) + 1
    for k in range(1, int(labels.max()) + 1):
        idx = np.argwhere(labels == k)
        box = tuple(slice(max(lo - m, 0), min(hi + m + 1, n)) for lo, hi, m, n in zip(idx.min(0), idx.max(0), margin, truth.shape))
        lesion = sitk.GetImageFromArray((labels[box] == k).astype(np.uint8))
        lesion.SetSpacing(tuple(spacing[::-1]))
        d = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(lesion, insideIsPositive=False, squaredDistance=False,
                                                                useImageSpacing=True))
        noise = sitk.GetImageFromArray(rng.standard_normal(d.shape).astype(np.float32))
        noise.SetSpacing(tuple(spacing[::-1]))
        wander = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, 5.0))
        wander *= rng.uniform(0.5, 2.0) / max(float(wander.std()), 1e-6)
        level = rng.uniform(-2.5, 2.5) + wander
        if spacing[0] >= 2.5:
            level += rng.normal(0, 0.8, d.shape[0])[:, None, None]
        out[box] |= d < level
    return out


# ------------------------------------------------------------------------------ given triplets
_NII = r"\.nii(?:\.gz)?$"
# demo layout: ct / truth / coarse; also <name>_ct / <name>_truth (or _label) / <name>_coarse
_ROLES = {"ct": ("ct", "image", "volume"), "truth": ("truth", "label", "gt"), "coarse": ("coarse",)}


def _role_files(folder: Path) -> dict[str, dict[str, Path]]:
    """{prefix: {role: path}} for the NIfTI files in ``folder`` named ``[prefix_]role.nii[.gz]``."""
    return files_by_role(folder, _ROLES, _NII)


def find_triplets(specs: Iterable[str]) -> list[tuple[str, Path, Path, Path]]:
    """(name, ct, truth, coarse) for each CASES argument: a folder holding one or more triplets
    (``ct.nii.gz`` + ``truth.nii.gz`` + ``coarse.nii.gz`` as the demo writes, or
    ``<name>_ct|truth|coarse.nii.gz``), a folder of such folders, or one CT file of a triplet."""
    triplets = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            folder, wanted = path.parent, path
        elif path.is_dir():
            folder, wanted = path, None
        else:
            raise RefineError(f"{spec}: no such file or folder.")
        folders = [folder] + ([p for p in sorted(folder.iterdir()) if p.is_dir()] if wanted is None else [])
        found_here = []
        for f in folders:
            for prefix, roles in _role_files(f).items():
                if set(roles) != set(_ROLES) or (wanted is not None and roles["ct"] != wanted):
                    continue
                name = prefix or f.name
                found_here.append((name, roles["ct"], roles["truth"], roles["coarse"]))
        if not found_here:
            raise RefineError(f"{spec}: no (CT, truth, coarse) triplet found; expected ct.nii.gz, truth.nii.gz and "
                              "coarse.nii.gz (the layout `livertumorrefine demo` writes) or <name>_ct/_truth/_coarse.nii.gz.")
        triplets.extend(found_here)
    return triplets


def read_triplet(name: str, ct_path: Path, truth_path: Path, coarse_path: Path) -> RefineCase:
    """Read a triplet: the CT reoriented like the dataset readers, truth and coarse put on its grid
    (nearest neighbour). A 0/1/2 label map gives its tumour label, a binary mask its foreground,
    a probability map values >= 0.5."""
    from LiverTumorRefineLib.training.datasets import read_oriented

    image = read_oriented(ct_path)
    reference = io.to_sitk(image)

    def mask(path: Path) -> np.ndarray:
        itk = io.resample_mask_to(sitk.DICOMOrient(io.read_image(path), "LPS"), reference)
        return tumour_mask(sitk.GetArrayFromImage(itk))

    return RefineCase(name, image.array.astype(np.float32, copy=False), mask(truth_path), mask(coarse_path),
                     tuple(float(s) for s in image.spacing_zyx))
