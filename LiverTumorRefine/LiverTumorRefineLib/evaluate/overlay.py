"""Overlay pictures of one axial CT slice with mask outlines (the paper's Figure 4).

Truth is outlined in red, the coarse mask in yellow and the refined mask in green, every outline
2 px wide. So that coincident outlines never hide each other, each has its own place and style:

- truth: a solid ring just *outside* its mask (the 2 px around it);
- refined: a solid ring just *inside* its mask (its outer 2 px);
- coarse: a *dashed* ring inside its mask (dashes of about 6 px along the outline, cut by angle
  around each outlined region's centre, so they are even in every direction), drawn last.

Where all three boundaries coincide the picture shows a red ring with alternating yellow and green
dashes inside it; where the refinement matches the truth, red and green rings lie side by side;
wherever coarse and refined differ, the green ring is whole and the yellow one dashed. The
captioned forms (``render_overlay_figure``, ``render_overlay_panel``) add a legend and the slice
number below the picture, in a built-in bitmap font.

Array row 0 is the top of the picture and column 0 its left edge; for an identity (LPS) direction
that is the radiological view: anterior up, the patient's right on the left of the screen.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorRefineLib.volume.atomic import atomic_path
from LiverTumorRefineLib.evaluate.bitmapfont import LINE, draw_text, text_width
from LiverTumorRefineLib.errors import RefineError

TRUTH_RGB = (255, 0, 0)
COARSE_RGB = (255, 255, 0)
REFINED_RGB = (0, 255, 0)
TEXT_RGB = (255, 255, 255)
SOFT_TISSUE_WINDOW = (-160.0, 240.0)

# Small slices are enlarged until their shorter side reaches this, so outlines are legible.
MIN_SHORT_SIDE_PX = 384
OUTLINE_PX = 2
DASH_PX = 6  # length of the coarse outline's dashes and gaps along the outline
# Black gap between the slices of a panel.
PANEL_GAP_PX = 8
# Captions: black strip below a picture, text in the 5x7 font at this scale when it fits.
CAPTION_SCALE = 2
CAPTION_PAD_PX = 6
SWATCH_PX = 18  # length of a legend's line sample
OUTSIDE, INSIDE, DASHED = "outside", "inside", "dashed"
# (name, colour, style) in drawing order.
STYLES = (("truth", TRUTH_RGB, OUTSIDE), ("refined", REFINED_RGB, INSIDE), ("coarse", COARSE_RGB, DASHED))


def render_overlay(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    truth: Optional[np.ndarray] = None,
    coarse: Optional[np.ndarray] = None,
    refined: Optional[np.ndarray] = None,
    slice_index: Optional[int] = None,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture of one axial slice of ``image`` with mask outlines.

    ``image`` and the masks are (z, y, x) arrays on the same grid; any mask may be None. The slice
    defaults to the one with the most tumour (truth, else refined, else coarse; the middle slice if
    all are absent or empty). The slice is shown in ``window`` (HU low, high), resampled to square
    pixels using ``spacing_zyx`` and enlarged so its shorter side is at least 384 px.
    """
    masks = _check_inputs(image, truth, coarse, refined)
    if slice_index is None:
        slice_index = default_slice(image.shape[0], truth, coarse, refined)
    if not 0 <= slice_index < image.shape[0]:
        raise RefineError(
            f"Slice {slice_index} is outside the image, which has {image.shape[0]} axial slices "
            f"(0 to {image.shape[0] - 1}); choose a slice in that range."
        )
    out_shape = _display_shape(image.shape[1:], spacing_zyx)
    planes = [(mask[slice_index], style) for mask, style in masks]
    return render_plane(image[slice_index], planes, out_shape, window)


def render_plane(
    plane: np.ndarray,
    masks: Sequence[tuple[np.ndarray, str]],
    out_shape: tuple[int, int],
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
) -> np.ndarray:
    """An ``out_shape`` RGB picture of one 2-D CT ``plane`` (HU) with the outlines of ``masks``:
    (2-D mask on the plane's grid, its name "truth", "coarse" or "refined"), drawn in the order
    and styles of ``STYLES`` (see the module docstring). ``out_shape`` sets the pixel aspect: give
    one with square pixels in mm."""
    rgb = _windowed_grey(_resize_linear(np.asarray(plane, dtype=np.float64), out_shape), window)
    by_name = {name: mask for mask, name in masks}
    unknown = set(by_name) - {name for name, _, _ in STYLES}
    if unknown:
        raise ValueError(f"unknown mask names {sorted(unknown)}")
    for name, colour, style in STYLES:
        if name in by_name:
            rgb[outline_pixels(_resize_nearest(by_name[name], out_shape), style)] = colour
    return rgb


def outline_pixels(mask: np.ndarray, style: str, width: int = OUTLINE_PX) -> np.ndarray:
    """The pixels of a 2-D mask's outline in ``style``: OUTSIDE (the ``width`` px ring around
    it), INSIDE (its own outer ``width`` px) or DASHED (INSIDE, every other ``DASH_PX`` px)."""
    if style == OUTSIDE:
        return _grow(mask, width) & ~mask
    rim = _outline(mask, width)
    if style == DASHED:
        rim &= _dashes(mask, rim)
    elif style != INSIDE:
        raise ValueError(f"unknown outline style {style!r}")
    return rim


def legend_entries(
    truth: Optional[np.ndarray] = None, coarse: Optional[np.ndarray] = None, refined: Optional[np.ndarray] = None
) -> list[str]:
    """Names of the masks given (not None), in legend order: truth, coarse, refined."""
    return [name for name, mask in (("truth", truth), ("coarse", coarse), ("refined", refined)) if mask is not None]


def caption_strip(width: int, lines: Sequence[str], legend: Sequence[str] = (), scale: int = CAPTION_SCALE) -> np.ndarray:
    """A black (H, width, 3) strip with a legend line (a line sample in each mask's style and
    colour, then its name) followed by ``lines`` of white text; ``scale`` drops to 1 when a line
    would not fit at ``scale``."""
    def needed(s: int) -> int:
        legend_px = sum(SWATCH_PX + 4 + text_width(name.upper(), s) + 12 * s for name in legend)
        return max([legend_px] + [text_width(line, s) for line in lines])

    while scale > 1 and needed(scale) > width - 2 * CAPTION_PAD_PX:
        scale -= 1
    n_lines = len(lines) + (1 if legend else 0)
    strip = np.zeros((2 * CAPTION_PAD_PX + n_lines * LINE * scale, width, 3), dtype=np.uint8)
    row = CAPTION_PAD_PX
    if legend:
        colours = {name: (colour, style) for name, colour, style in STYLES}
        col = CAPTION_PAD_PX
        for name in legend:
            colour, style = colours[name]
            sample = np.zeros((OUTLINE_PX + 2, SWATCH_PX), dtype=bool)
            sample[1:1 + OUTLINE_PX] = True
            if style == DASHED:
                sample &= (np.indices(sample.shape)[1] // DASH_PX) % 2 == 0
            top = row + (7 * scale - sample.shape[0]) // 2
            target = strip[top:top + sample.shape[0], col:col + SWATCH_PX]
            target[sample[:target.shape[0], :target.shape[1]]] = colour
            col = draw_text(strip, name.upper(), row, col + SWATCH_PX + 4, colour, scale) + 12 * scale
        row += LINE * scale
    for line in lines:
        draw_text(strip, line, row, CAPTION_PAD_PX, TEXT_RGB, scale)
        row += LINE * scale
    return strip


def with_caption(picture: np.ndarray, lines: Sequence[str], legend: Sequence[str] = ()) -> np.ndarray:
    """``picture`` with a ``caption_strip`` below it."""
    return np.concatenate([picture, caption_strip(picture.shape[1], lines, legend)], axis=0)


def render_overlay_figure(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    truth: Optional[np.ndarray] = None,
    coarse: Optional[np.ndarray] = None,
    refined: Optional[np.ndarray] = None,
    slice_index: Optional[int] = None,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
) -> np.ndarray:
    """:func:`render_overlay` with a legend and the slice number ("SLICE k OF n", array index
    of the axial slice) below it: what ``livertumorrefine overlay`` writes."""
    if slice_index is None:
        slice_index = default_slice(image.shape[0], truth, coarse, refined)
    picture = render_overlay(image, spacing_zyx, truth, coarse, refined, slice_index, window)
    return with_caption(picture, [f"SLICE {slice_index} OF {image.shape[0]}"], legend_entries(truth, coarse, refined))


def render_overlay_panel(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    truth: Optional[np.ndarray] = None,
    coarse: Optional[np.ndarray] = None,
    refined: Optional[np.ndarray] = None,
    slice_indices: Optional[Sequence[int]] = None,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
) -> np.ndarray:
    """Several :func:`render_overlay_figure` slices (legend and slice number below each) side by
    side, separated by a black gap.

    By default three slices evenly spaced through the tumour's axial extent (same mask preference
    as :func:`render_overlay`), or through the whole volume if there is no tumour.
    """
    if slice_indices is None:
        slice_indices = panel_slices(image.shape[0], truth, coarse, refined)
    pictures = [
        render_overlay_figure(image, spacing_zyx, truth, coarse, refined, index, window) for index in slice_indices
    ]
    gap = np.zeros((pictures[0].shape[0], PANEL_GAP_PX, 3), dtype=np.uint8)
    parts = [part for picture in pictures for part in (gap, picture)][1:]
    return np.concatenate(parts, axis=1)


def write_png(rgb: np.ndarray, path: "str | os.PathLike[str]") -> None:
    """Write an (H, W, 3) uint8 picture as PNG, atomically (a reader never sees half a file) and
    verified by reading it back before the rename. The name must end in ``.png``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise RefineError(f"Cannot write {target}: an overlay is a PNG picture, so its name must end in .png.")
    if not target.parent.is_dir():
        raise RefineError(f"Cannot write {target}: folder {target.parent} does not exist; create it first.")
    # Same folder so os.replace is an atomic rename; .png suffix so SimpleITK picks the PNG writer.
    with atomic_path(target, ".png") as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), temporary)
        try:
            same = np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(temporary)), rgb)
        except RuntimeError:
            same = False
        if not same:
            raise RefineError(f"Writing {target} failed (the file read back differs): is the disk full? Free some "
                              "space or choose another folder; nothing was written.")


def default_slice(
    n_slices: int,
    truth: Optional[np.ndarray] = None,
    coarse: Optional[np.ndarray] = None,
    refined: Optional[np.ndarray] = None,
) -> int:
    """Index of the axial slice with the most tumour, or the middle slice if there is none."""
    reference = _reference_mask(truth, coarse, refined)
    if reference is None:
        return n_slices // 2
    return int(np.argmax(_area_per_slice(reference)))


def panel_slices(
    n_slices: int,
    truth: Optional[np.ndarray] = None,
    coarse: Optional[np.ndarray] = None,
    refined: Optional[np.ndarray] = None,
    count: int = 3,
) -> list[int]:
    """``count`` slice indices evenly spaced strictly inside the tumour's (or volume's) z-range."""
    reference = _reference_mask(truth, coarse, refined)
    if reference is None:
        first, last = 0, n_slices - 1
    else:
        occupied = np.flatnonzero(_area_per_slice(reference))
        first, last = int(occupied[0]), int(occupied[-1])
    # Interior points of count+1 equal steps: avoids the thin caps at the tumour's ends.
    return [int(np.floor(z + 0.5)) for z in np.linspace(first, last, count + 2)[1:-1]]


def _check_inputs(
    image: np.ndarray,
    truth: Optional[np.ndarray],
    coarse: Optional[np.ndarray],
    refined: Optional[np.ndarray],
) -> list[tuple[np.ndarray, str]]:
    """The present masks with their names, after checking shapes."""
    if image.ndim != 3:
        raise RefineError(f"The image must be a 3-D (z, y, x) array, got shape {image.shape}.")
    masks = []
    for name, mask in (("truth", truth), ("coarse", coarse), ("refined", refined)):
        if mask is None:
            continue
        if mask.shape != image.shape:
            raise RefineError(
                f"The {name} mask has shape {mask.shape} but the image has {image.shape}; "
                "resample the mask onto the image grid first."
            )
        masks.append((mask, name))
    return masks


def _reference_mask(
    truth: Optional[np.ndarray], coarse: Optional[np.ndarray], refined: Optional[np.ndarray]
) -> Optional[np.ndarray]:
    """The mask that locates the tumour: truth, else refined, else coarse; None if all are empty."""
    for mask in (truth, refined, coarse):
        if mask is not None and np.any(mask):
            return mask
    return None


def _area_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)


def _display_shape(plane_shape: tuple[int, ...], spacing_zyx: Sequence[float]) -> tuple[int, int]:
    """(rows, columns) giving square pixels of the finer in-plane spacing, enlarged if small."""
    row_mm, col_mm = float(spacing_zyx[1]), float(spacing_zyx[2])
    pixel_mm = min(row_mm, col_mm)
    rows, cols = plane_shape[0] * row_mm / pixel_mm, plane_shape[1] * col_mm / pixel_mm
    zoom = max(1.0, MIN_SHORT_SIDE_PX / min(rows, cols))
    return max(1, round(rows * zoom)), max(1, round(cols * zoom))


def _source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Continuous input index of each output pixel centre (pixel centres aligned at the edges)."""
    return (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5


def _resize_nearest(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.clip(np.floor(_source_coordinates(plane.shape[0], shape[0]) + 0.5), 0, plane.shape[0] - 1)
    cols = np.clip(np.floor(_source_coordinates(plane.shape[1], shape[1]) + 0.5), 0, plane.shape[1] - 1)
    return plane[np.ix_(rows.astype(np.intp), cols.astype(np.intp))].astype(bool)


def _resize_linear(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize, one axis at a time, holding edge values beyond the outer pixel centres."""
    for axis, n_out in enumerate(shape):
        n_in = plane.shape[axis]
        coords = np.clip(_source_coordinates(n_in, n_out), 0, n_in - 1)
        low = np.floor(coords).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        frac = coords - low
        frac = frac.reshape((-1, 1) if axis == 0 else (1, -1))
        plane = np.take(plane, low, axis=axis) * (1 - frac) + np.take(plane, high, axis=axis) * frac
    return plane


def _windowed_grey(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise RefineError(f"The display window must have low < high, got {window}.")
    grey = np.round(np.clip((plane - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask's inner rim, ``width`` pixels thick (4-neighbour erosion, outside = background)."""
    core = mask
    for _ in range(width):
        padded = np.pad(core, 1)
        core = (
            core
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return mask & ~core


def _grow(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` dilated ``width`` times by the 4-neighbourhood (nothing grows in from outside)."""
    grown = mask
    for _ in range(width):
        padded = np.pad(grown, 1)
        grown = grown | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return grown


def _dashes(mask: np.ndarray, rim: np.ndarray) -> np.ndarray:
    """Which ``rim`` pixels are "on" in a dash pattern: the angle of each pixel around the centre
    of its connected region, in steps of ``DASH_PX`` px of arc at the region's mean radius."""
    on = np.zeros(mask.shape, dtype=bool)
    if not rim.any():
        return on
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    rows, cols = np.nonzero(mask)
    which = labels[rows, cols]
    area = np.bincount(which)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_r = np.bincount(which, rows) / area
        centre_c = np.bincount(which, cols) / area
    rr, rc = np.nonzero(rim)
    k = labels[rr, rc]
    radius = np.maximum(np.sqrt(area[k] / np.pi), 1.0)
    arc = (np.arctan2(rr - centre_r[k], rc - centre_c[k]) + np.pi) * radius
    on[rr, rc] = (np.floor(arc / DASH_PX).astype(np.int64) % 2) == 0
    return on
