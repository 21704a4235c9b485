"""Quality-assurance contact sheets: one zoomed tile per lesion with truth/coarse/refined outlines.

Each tile shows the lesion's central axial slice (the middle of its slice range), cropped around the
lesion with a margin (half its size, at least 10 mm) as a square in mm, outlined as in ``overlay``
(truth red outside, refined green inside, coarse yellow dashed), with the lesion's number, slice,
volume, longest diameter and Dice (``review.review_lesions``) below it. A header gives the case
name and the legend.

``find_cases`` finds the cases of a folder for ``livertumorrefine qa --batch``: files named
``[NAME_]ct``, ``[NAME_]truth``, ``[NAME_]coarse`` and ``[NAME_]refined`` with a ``.nii``,
``.nii.gz``, ``.nrrd``, ``.mha``, ``.seg.nrrd`` or ``.dcm`` extension (the layout ``livertumorrefine
demo`` writes; truth optional; ``image``/``volume`` and ``label``/``gt`` also name the CT and truth),
in the folder or in its sub-folders, where the CT may also be a DICOM series sub-folder ``ct/``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.overlay import SOFT_TISSUE_WINDOW, caption_strip, render_plane
from LiverTumorRefineLib.evaluate.review import LesionReview, lesion_labels, review_lesions
from LiverTumorRefineLib.volume.geometry import Volume

TILE_PX = 288
TILE_GAP_PX = 8
COLUMNS = 4
MIN_MARGIN_MM = 10.0
OUTSIDE_HU = -1024.0  # what the crop shows beyond the image's edge
CAPTION_LINES = 5  # fixed, so all tiles have the same height


@dataclass
class QaCase:
    """The files of one case for a QA sheet (``truth`` may be None)."""

    name: str
    ct: Path
    truth: Optional[Path]
    coarse: Path
    refined: Path


def tile_caption(row: LesionReview) -> list[str]:
    """The text under a lesion's tile: number and slice, volume, diameter, Dice, status."""
    central = (row.first_slice + row.last_slice) // 2
    lines = [f"LESION {row.lesion}  SLICE {central}",
             f"VOL {_ml(row.coarse_ml)} -> {_ml(row.refined_ml)} ML",
             f"D {row.coarse_diameter_mm:.1f} -> {row.refined_diameter_mm:.1f} MM"]
    if row.coarse_dice is not None and row.refined_dice is not None:
        lines.append(f"DICE {row.coarse_dice:.2f} -> {row.refined_dice:.2f}")
    else:
        lines.append("DICE -")
    status = row.status.upper() + (f" CONF {row.confidence:.2f}" if row.confidence is not None else "")
    if row.flags:
        status += "  !" + " !".join("D20%" if "diameter" in f else "10MM" for f in row.flags)
    lines.append(status)
    return lines


def render_lesion_tile(image: np.ndarray, spacing_zyx: Sequence[float], labels: np.ndarray, row: LesionReview,
                       truth: Optional[np.ndarray], coarse: np.ndarray, refined: np.ndarray,
                       window: tuple[float, float] = SOFT_TISSUE_WINDOW, size: int = TILE_PX) -> np.ndarray:
    """The (size, size, 3) picture of lesion ``row.lesion`` (of ``labels``) on its central slice,
    zoomed to it (no caption)."""
    central = (row.first_slice + row.last_slice) // 2
    region = labels[row.first_slice:row.last_slice + 1] == row.lesion
    rows_hit = np.flatnonzero(region.any(axis=(0, 2)))
    cols_hit = np.flatnonzero(region.any(axis=(0, 1)))
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    height_mm = (rows_hit[-1] - rows_hit[0] + 1) * sy
    width_mm = (cols_hit[-1] - cols_hit[0] + 1) * sx
    side_mm = max(height_mm, width_mm) + 2 * max(MIN_MARGIN_MM, 0.5 * max(height_mm, width_mm))
    centre_r = (rows_hit[0] + rows_hit[-1]) / 2
    centre_c = (cols_hit[0] + cols_hit[-1]) / 2
    n_r, n_c = max(1, round(side_mm / sy)), max(1, round(side_mm / sx))
    r0, c0 = int(round(centre_r - (n_r - 1) / 2)), int(round(centre_c - (n_c - 1) / 2))

    def crop(plane: np.ndarray, fill: float | bool) -> np.ndarray:
        out = np.full((n_r, n_c), fill, dtype=plane.dtype)
        a, b = max(r0, 0), min(r0 + n_r, plane.shape[0])
        c, d = max(c0, 0), min(c0 + n_c, plane.shape[1])
        if b > a and d > c:
            out[a - r0:b - r0, c - c0:d - c0] = plane[a:b, c:d]
        return out

    masks = [(crop(m[central], False), name) for m, name in ((truth, "truth"), (coarse, "coarse"), (refined, "refined"))
             if m is not None]
    return render_plane(crop(np.asarray(image[central], dtype=np.float64), OUTSIDE_HU), masks, (size, size), window)


def render_qa_sheet(image: np.ndarray, spacing_zyx: Sequence[float], coarse: np.ndarray, refined: np.ndarray,
                    truth: Optional[np.ndarray] = None, rows: Optional[Sequence[LesionReview]] = None,
                    title: str = "", window: tuple[float, float] = SOFT_TISSUE_WINDOW,
                    labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """A contact sheet with one captioned tile per lesion of coarse ∪ refined, ``COLUMNS`` per
    row, under a header (``title``, lesion count and legend); returns the picture and, for each
    tile, the (rows, columns) slices of its picture area (without caption). ``rows``: the review
    rows if already computed (they must come from the same masks)."""
    coarse, refined = np.asarray(coarse).astype(bool), np.asarray(refined).astype(bool)
    truth = None if truth is None else np.asarray(truth).astype(bool)
    if labels is None:
        labels = lesion_labels(coarse, refined)
    if rows is None:
        rows = review_lesions(coarse, refined, spacing_zyx, reference=truth, labels=labels)
    if not rows:
        raise RefineError("There are no lesions to show: the coarse and refined masks are both empty. Check the "
                          "masks and the tumour label.")
    columns = min(COLUMNS, len(rows))
    width = columns * TILE_PX + (columns - 1) * TILE_GAP_PX
    legend = ["truth", "coarse", "refined"] if truth is not None else ["coarse", "refined"]
    header = caption_strip(width, [f"{title}  {len(rows)} LESION{'S' if len(rows) != 1 else ''}".strip()], legend)
    tiles, boxes = [], []
    for row in rows:
        picture = render_lesion_tile(image, spacing_zyx, labels, row, truth, coarse, refined, window)
        lines = (tile_caption(row) + [""] * CAPTION_LINES)[:CAPTION_LINES]
        tiles.append(np.concatenate([picture, caption_strip(TILE_PX, lines)], axis=0))
    tile_h = tiles[0].shape[0]
    n_rows = -(-len(tiles) // columns)
    sheet = np.zeros((header.shape[0] + n_rows * tile_h + (n_rows - 1) * TILE_GAP_PX, width, 3), dtype=np.uint8)
    sheet[:header.shape[0]] = header
    for i, tile in enumerate(tiles):
        top = header.shape[0] + (i // columns) * (tile_h + TILE_GAP_PX)
        left = (i % columns) * (TILE_PX + TILE_GAP_PX)
        sheet[top:top + tile_h, left:left + TILE_PX] = tile
        boxes.append((slice(top, top + TILE_PX), slice(left, left + TILE_PX)))
    return sheet, boxes


def load_case(ct_path: str | os.PathLike, coarse_path: str | os.PathLike, refined_path: str | os.PathLike,
              truth_path: str | os.PathLike | None = None, label: int | None = None,
              segment: str | int | None = None) -> tuple[Volume, Optional[np.ndarray], np.ndarray, np.ndarray]:
    """The CT reoriented to LPS and the truth, coarse and refined tumour masks (bool) on its grid.
    Masks may be volume files, DICOM SEG, .seg.nrrd (``segment`` picks one of several segments) or
    RT structure sets. The tumour label is ``label``, else the one the first mask (truth, else
    coarse) implies (2 in a 0/1/2 map, the one non-zero value of a binary mask)."""
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.volume import files, io

    ct = io.to_lps(io.read_image(ct_path))
    image = io.from_sitk(ct)
    masks: dict[str, Optional[np.ndarray]] = {"truth": None}
    chosen, decided = label, label is not None
    for name, path in (("truth", truth_path), ("coarse", coarse_path), ("refined", refined_path)):
        if path is None:
            continue
        array = files.mask_for_display(path, ct, segment).array
        if not decided:
            masks[name], chosen = api.select_label(array, None)
            decided = True
        else:
            masks[name] = api.prediction_mask(array, chosen)
    return image, masks["truth"], masks["coarse"], masks["refined"]  # type: ignore[return-value]


_ROLES = {"ct": ("ct", "image", "volume"), "truth": ("truth", "label", "gt"), "coarse": ("coarse",),
          "refined": ("refined",)}
# The files a folder of cases is matched on: volume files, Slicer .seg.nrrd and DICOM .dcm (SEG, RT structure set).
CASE_FILES = r"(?:\.seg)?\.(?:nii(?:\.gz)?|nrrd|mha|dcm)$"
CT_WORDS = ("ct", "image", "volume")


def dicom_ct_folder(folder: Path) -> Optional[Path]:
    """A sub-folder of ``folder`` named ``ct``, ``image`` or ``volume`` (any case): a case's CT as
    a DICOM series; None when there is none."""
    return next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() in CT_WORDS), None)


def files_by_role(folder: Path, roles: Mapping[str, Sequence[str]], suffix: str = CASE_FILES,
                  ct_role: Optional[str] = None) -> dict[str, dict[str, Path]]:
    """{prefix: {role: path}} for the files in ``folder`` named ``[prefix_]word<suffix>``, where
    ``word`` is one of a role's words (case-insensitive; the first file found per role wins).
    With ``ct_role``, a DICOM series sub-folder (``dicom_ct_folder``) is that role of the
    unprefixed case, when the folder holds other files of it."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        for role, words in roles.items():
            if m := re.match(rf"^(?:(.+)[_-])?(?:{'|'.join(words)}){suffix}", path.name, re.IGNORECASE):
                found.setdefault(m.group(1) or "", {}).setdefault(role, path)
                break
    series = dicom_ct_folder(folder) if ct_role is not None and "" in found else None
    if series is not None:
        found[""].setdefault(ct_role, series)
    return found


def find_cases(folder: str | os.PathLike) -> list[QaCase]:
    """The QA cases in ``folder`` and its direct sub-folders (see the module docstring), by name."""
    root = Path(folder)
    if not root.is_dir():
        raise RefineError(f"{folder} is not a folder: give the folder that holds the cases.")
    cases = []
    for f in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        for prefix, roles in sorted(files_by_role(f, _ROLES, ct_role="ct").items()):
            if {"ct", "coarse", "refined"} <= set(roles):
                cases.append(QaCase(prefix or f.name, roles["ct"], roles.get("truth"), roles["coarse"], roles["refined"]))
    if not cases:
        raise RefineError(f"No cases found in {folder}: a case is ct, coarse and refined files (and optionally truth), "
                          "named ct.nii.gz, coarse.nii.gz, refined.nii.gz, truth.nii.gz as the demo writes them, or "
                          "NAME_ct.nii.gz and so on.")
    names = [c.name for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RefineError(f"Several cases in {folder} are called {', '.join(twice)}: their sheets would overwrite each "
                          "other; rename the files or folders.")
    return cases


def _ml(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
