"""Overlay picture: 2 px outlines in their places and styles, legend and slice number, slice choice, aspect
ratio, PNG writing."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_dilation, binary_erosion

from LiverTumorRefineLib.evaluate import bitmapfont

from LiverTumorRefineLib.evaluate import overlay
from LiverTumorRefineLib.errors import RefineError

RED, YELLOW, GREEN = overlay.TRUTH_RGB, overlay.COARSE_RGB, overlay.REFINED_RGB
SHAPE = (9, 48, 64)  # 48 x 64 slice at 1 mm -> enlarged 8x to 384 x 512
ZOOM = 8
# (row, column) centre and radius in source pixels; truth's radius peaks at slice 6.
TRUTH_DISC = ((22.0, 24.0), 10.0)
COARSE_DISC = ((26.0, 30.0), 9.0)
REFINED_DISC = ((24.0, 36.0), 8.0)
TRUTH_RADIUS_BY_SLICE = (0, 3, 5, 6, 7, 8, 10, 8, 4)


def _disc(centre: tuple[float, float], radius: float, shape: tuple[int, int] = SHAPE[1:]) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image = np.full(SHAPE, 60.0)  # soft tissue
    truth = np.zeros(SHAPE, dtype=bool)
    for z, radius in enumerate(TRUTH_RADIUS_BY_SLICE):
        truth[z] = _disc(TRUTH_DISC[0], radius) if radius else False
    coarse = np.zeros(SHAPE, dtype=np.uint8)  # label maps need not be boolean
    refined = np.zeros(SHAPE, dtype=bool)
    coarse[2:8] = _disc(*COARSE_DISC)
    refined[2:8] = _disc(*REFINED_DISC)
    return image, truth, coarse, refined


def _pixels_of(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(rgb == np.array(colour, dtype=np.uint8), axis=2)


def _big(disc: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(disc, ZOOM, axis=0), ZOOM, axis=1)


def _inner_rim(disc: np.ndarray) -> np.ndarray:
    """Independent reference: upscale by pixel repetition, then mask minus its 2-step 4-neighbour erosion."""
    big = _big(disc)
    return big & ~binary_erosion(big, iterations=overlay.OUTLINE_PX, border_value=0)


def _outer_ring(disc: np.ndarray) -> np.ndarray:
    big = _big(disc)
    return binary_dilation(big, iterations=overlay.OUTLINE_PX) & ~big


def test_outlines_lie_on_their_disc_boundaries(tmp_path) -> None:
    image, truth, coarse, refined = _phantom()
    rgb = overlay.render_overlay(image, (2.5, 1.0, 1.0), truth, coarse, refined, slice_index=6)
    path = tmp_path / "overlay.png"
    overlay.write_png(rgb, path)
    read_back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(read_back, rgb)

    assert read_back.shape == (SHAPE[1] * ZOOM, SHAPE[2] * ZOOM, 3)
    rings = {
        RED: _outer_ring(truth[6]),  # truth: 2 px just outside its mask
        YELLOW: _inner_rim(coarse[6] > 0),  # coarse: 2 px inside, dashed
        GREEN: _inner_rim(refined[6]),  # refined: 2 px inside, solid
    }
    for colour, (centre, radius) in ((RED, TRUTH_DISC), (YELLOW, COARSE_DISC), (GREEN, REFINED_DISC)):
        coloured = _pixels_of(read_back, colour)
        # Every pixel of this colour is on its own disc's ring ...
        assert coloured.any() and not (coloured & ~rings[colour]).any()
        # ... a 2 px wide outline (half of it for the dashed coarse one), at the disc's radius.
        circumference = 2 * np.pi * radius * ZOOM
        share = 0.5 if colour == YELLOW else 1.0
        assert 0.7 * share * 2 * circumference < coloured.sum() < 1.3 * share * 2 * circumference
        rows, cols = np.nonzero(coloured)
        centre_px = (np.array(centre) + 0.5) * ZOOM - 0.5
        distance = np.hypot(rows - centre_px[0], cols - centre_px[1])
        assert np.all(np.abs(distance - radius * ZOOM) <= ZOOM)
    # The coarse outline is dashed: about half its ring, in several separate dashes.
    yellow = _pixels_of(read_back, YELLOW)
    assert 0.35 < yellow.sum() / rings[YELLOW].sum() < 0.65
    assert sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(yellow.astype(np.uint8)))).max() > 20
    # Green is whole wherever the dashes leave it.
    assert np.all((_pixels_of(read_back, GREEN) | yellow)[rings[GREEN]])
    # Away from the outlines the picture is the grey soft-tissue window: 60 HU in (-160, 240).
    untouched = ~(rings[RED] | rings[YELLOW] | rings[GREEN])
    assert np.all(read_back[untouched] == round((60 + 160) / 400 * 255))


def test_coincident_outlines_all_stay_visible() -> None:
    """Truth, coarse and refined identical: red ring outside, yellow dashes and green inside."""
    image, truth, _, _ = _phantom()
    rgb = overlay.render_overlay(image, (2.5, 1.0, 1.0), truth, truth, truth, slice_index=6)
    rim = _inner_rim(truth[6])
    counts = {colour: _pixels_of(rgb, colour).sum() for colour in (RED, YELLOW, GREEN)}
    assert counts[RED] >= _outer_ring(truth[6]).sum() * 0.99
    assert 0.35 * rim.sum() < counts[YELLOW] < 0.65 * rim.sum()
    assert 0.35 * rim.sum() < counts[GREEN] < 0.65 * rim.sum()


def test_figure_has_legend_and_slice_number() -> None:
    image, truth, coarse, refined = _phantom()
    picture = overlay.render_overlay(image, (2.5, 1.0, 1.0), truth, coarse, refined, slice_index=6)
    figure = overlay.render_overlay_figure(image, (2.5, 1.0, 1.0), truth, coarse, refined, slice_index=6)
    np.testing.assert_array_equal(figure[: picture.shape[0]], picture)
    strip = figure[picture.shape[0]:]
    assert strip.shape[0] > 30 and strip.shape[1] == picture.shape[1]
    legend_row = strip[: strip.shape[0] // 2]
    for colour in (RED, YELLOW, GREEN):
        assert _pixels_of(legend_row, colour).sum() > 40, colour  # line sample and name in each colour
    # The slice number, drawn in the built-in font at the caption scale, is there pixel for pixel.
    ink = bitmapfont.text_mask("SLICE 6 OF 9", overlay.CAPTION_SCALE)
    top = overlay.CAPTION_PAD_PX + bitmapfont.LINE * overlay.CAPTION_SCALE
    left = overlay.CAPTION_PAD_PX
    window = strip[top: top + ink.shape[0], left: left + ink.shape[1]]
    np.testing.assert_array_equal(_pixels_of(window, overlay.TEXT_RGB), ink)
    # Only the masks given are in the legend.
    only_refined = overlay.render_overlay_figure(image, (2.5, 1.0, 1.0), refined=refined, slice_index=6)
    strip = only_refined[picture.shape[0]:]
    assert _pixels_of(strip, GREEN).any() and not _pixels_of(strip, RED).any() and not _pixels_of(strip, YELLOW).any()


def test_default_slice_has_most_truth() -> None:
    image, truth, coarse, refined = _phantom()
    assert overlay.default_slice(SHAPE[0], truth, coarse, refined) == 6
    default = overlay.render_overlay(image, (2.5, 1.0, 1.0), truth, coarse, refined)
    chosen = overlay.render_overlay(image, (2.5, 1.0, 1.0), truth, coarse, refined, slice_index=6)
    np.testing.assert_array_equal(default, chosen)


def test_default_slice_falls_back_to_refined_then_middle() -> None:
    _, truth, coarse, refined = _phantom()
    refined_only = np.zeros(SHAPE, dtype=bool)
    refined_only[3] = _disc(*REFINED_DISC)
    assert overlay.default_slice(SHAPE[0], np.zeros(SHAPE, bool), coarse, refined_only) == 3
    assert overlay.default_slice(SHAPE[0], None, None, None) == SHAPE[0] // 2


def test_anisotropic_pixels_are_squared_up() -> None:
    """40 rows of 2 mm by 80 columns of 0.5 mm is 80 mm tall and 40 mm wide: a 2:1 picture."""
    shape = (3, 40, 80)
    rows, cols = np.ogrid[:40, :80]
    ellipse = ((rows - 20) * 2.0) ** 2 + ((cols - 40) * 0.5) ** 2 <= 15.0**2  # 15 mm circle
    refined = np.broadcast_to(ellipse, shape)
    rgb = overlay.render_overlay(np.zeros(shape), (3.0, 2.0, 0.5), refined=refined)
    assert rgb.shape == (768, 384, 3)  # 0.5 mm pixels, 160 x 80, enlarged so the short side is 384
    rows_g, cols_g = np.nonzero(_pixels_of(rgb, GREEN))
    height, width = np.ptp(rows_g) + 1, np.ptp(cols_g) + 1
    assert abs(height - width) <= 0.05 * width  # the circle stays a circle


def test_large_slice_is_not_resampled() -> None:
    rgb = overlay.render_overlay(np.zeros((1, 400, 500)), (1.0, 0.8, 0.8))
    assert rgb.shape == (400, 500, 3)


def test_window_maps_low_to_black_and_high_to_white() -> None:
    image = np.zeros((1, 2, 2))
    image[0] = [[-1000.0, -160.0], [240.0, 3000.0]]
    rgb = overlay.render_overlay(image, (1.0, 1.0, 1.0))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])


def test_panel_puts_three_tumour_slices_side_by_side() -> None:
    image, truth, coarse, refined = _phantom()
    assert overlay.panel_slices(SHAPE[0], truth, coarse, refined) == [3, 5, 6]
    panel = overlay.render_overlay_panel(image, (2.5, 1.0, 1.0), truth, coarse, refined)
    single = overlay.render_overlay_figure(image, (2.5, 1.0, 1.0), truth, coarse, refined, slice_index=5)
    width = single.shape[1]
    assert panel.shape == (single.shape[0], 3 * width + 2 * overlay.PANEL_GAP_PX, 3)
    middle = panel[:, width + overlay.PANEL_GAP_PX : 2 * width + overlay.PANEL_GAP_PX]
    np.testing.assert_array_equal(middle, single)


@pytest.mark.parametrize("index", [-1, SHAPE[0]])
def test_slice_out_of_range_raises(index: int) -> None:
    image, truth, _, _ = _phantom()
    with pytest.raises(RefineError, match="outside the image"):
        overlay.render_overlay(image, (2.5, 1.0, 1.0), truth, slice_index=index)


def test_mask_shape_mismatch_raises() -> None:
    image, _, coarse, _ = _phantom()
    with pytest.raises(RefineError, match="coarse mask"):
        overlay.render_overlay(image, (2.5, 1.0, 1.0), coarse=coarse[:-1])


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    target = tmp_path / "figure.png"
    overlay.write_png(rgb, target)
    overlay.write_png(rgb + 7, target)  # replacing an existing file
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), rgb + 7)

    def failing_write(*_args) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(overlay.sitk, "WriteImage", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        overlay.write_png(rgb, target)
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # old picture kept, no leftovers


def test_write_into_missing_folder_raises(tmp_path) -> None:
    with pytest.raises(RefineError, match="does not exist"):
        overlay.write_png(np.zeros((2, 2, 3), dtype=np.uint8), tmp_path / "missing" / "figure.png")


def test_every_character_the_qa_captions_use_has_a_glyph():
    """A flag mark drawn as "?" once hid what a qa tile flags: every caption character is in the font."""
    from LiverTumorRefineLib.evaluate.qa import tile_caption
    from LiverTumorRefineLib.evaluate.review import FLAG_DIAMETER, FLAG_MEASURABLE

    unknown = bitmapfont.text_mask("?", 1)
    row = type("Row", (), {})()
    for name, value in dict(lesion=3, first_slice=4, last_slice=9, coarse_ml=1.25, refined_ml=1.5,
                            coarse_diameter_mm=9.5, refined_diameter_mm=12.5, coarse_dice=0.7, refined_dice=0.8,
                            confidence=0.9, status="refined", flags=[FLAG_DIAMETER, FLAG_MEASURABLE]).items():
        setattr(row, name, value)
    lines = tile_caption(row)
    assert "!" in lines[-1]
    for character in set("".join(lines)) - {"?", " "}:
        assert not np.array_equal(bitmapfont.text_mask(character, 1), unknown), f"no glyph for {character!r}"
