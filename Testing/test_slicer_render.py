"""What the user sees: the red slice view rendered offscreen by Slicer's own displayable managers
after a refinement, truth red, coarse yellow and refined green as outlines where the segments are.

Rendering goes through EGL (Mesa llvmpipe on machines without a GPU; Debian packages libegl1,
libegl-mesa0, libgl1-mesa-dri). Without a working EGL the test is skipped, or fails when
LTR_REQUIRE_RENDER=1 (CI sets it). LTR_UPDATE_SCREENSHOT=1 also refreshes the README screenshot
Resources/Screenshots/slice_outlines.png.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the PyPI slicer-core package")

from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
from LiverTumorRefineLib.scene import nodes as scene_nodes  # noqa: E402
import slicer_testing as st  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[1] / "Resources" / "Screenshots" / "slice_outlines.png"
SIZE = 512
EGL_PROBE = """
import os
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
window.AddRenderer(vtk.vtkRenderer())
interactor = vtk.vtkRenderWindowInteractor()
interactor.SetRenderWindow(window)
window.Render()
print(window.GetClassName())
"""


@pytest.fixture(scope="module")
def egl():
    """Probe offscreen rendering in a child process: a broken GL stack can abort the interpreter."""
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    try:
        probe = subprocess.run([sys.executable, "-c", EGL_PROBE], capture_output=True, text=True, timeout=120, env=env)
        ok, detail = probe.returncode == 0 and "EGL" in probe.stdout, (probe.stderr or probe.stdout)[-400:]
    except subprocess.TimeoutExpired:
        ok, detail = False, "the probe timed out"
    if not ok:
        message = ("offscreen EGL rendering does not work here (apt-get install libegl1 libegl-mesa0 "
                   f"libgl1-mesa-dri): {detail.strip()}")
        if os.environ.get("LTR_REQUIRE_RENDER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _grow_shrink(mask2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dilation and erosion by the 8-neighbourhood."""
    padded = np.pad(mask2d, 1)
    shifts = [padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.logical_or.reduce(shifts), np.logical_and.reduce(shifts)


def _near_boundary(mask2d: np.ndarray) -> np.ndarray:
    """Voxels within one voxel of the mask's edge, inside or outside."""
    grown, shrunk = _grow_shrink(mask2d)
    return grown & ~shrunk


def _grow(mask2d: np.ndarray, n: int) -> np.ndarray:
    for _ in range(n):
        mask2d = _grow_shrink(mask2d)[0]
    return mask2d


def refined_scene(trained_model):
    """A fresh scene with synthetic case 0 (CT, coarse, reference) refined by the Logic:
    (app, case, scene case, result)."""
    app = st.make_app()
    case = st.synthetic_case(0)
    sc = st.build_scene_case(app.scene, case)
    # min_kept 0: the Refiner's per-lesion gate would keep this small lesion's coarse mask (see test_logic)
    logic = ltr.LiverTumorRefineLogic(weights=trained_model, refinerOptions={"min_kept": 0.0})
    result = logic.refine(sc.volumeNode, sc.segmentationNode, sc.coarseId, sc.truthSegmentationNode, sc.truthId,
                          device="cpu")
    return app, case, sc, result


def test_red_slice_shows_three_outlines_where_the_segments_are(egl, trained_model, tmp_path):
    app, case, sc, result = refined_scene(trained_model)
    refined = scene_nodes.export_segment_mask(sc.segmentationNode, result.refinedSegmentId, sc.volumeNode)
    k = int(np.argmax(case.truth.sum(axis=(1, 2))))  # the slice where the lesion is largest
    slice_s = float((sc.matrix @ np.array([0.0, 0.0, k, 1.0]))[2])

    renderer = st.SliceRenderer(app, SIZE, SIZE)
    renderer.show(sc.volumeNode, slice_s)
    rgb = renderer.render()
    st.write_png(rgb, str(tmp_path / "slice_outlines.png"))
    if os.environ.get("LTR_UPDATE_SCREENSHOT") == "1":
        st.write_png(rgb, str(SCREENSHOT))
    assert rgb.shape == (SIZE, SIZE, 3)

    rows, cols = np.mgrid[:SIZE, :SIZE]
    ijk = renderer.pixel_to_ijk(sc.volumeNode, rows.ravel(), cols.ravel()).reshape(SIZE, SIZE, 3)
    assert np.all(ijk[..., 0] == k), "the view is not on the lesion's slice"
    shape = case.truth.shape
    inside = (ijk[..., 1] >= 0) & (ijk[..., 1] < shape[1]) & (ijk[..., 2] >= 0) & (ijk[..., 2] < shape[2])
    jj, ii = np.clip(ijk[..., 1], 0, shape[1] - 1), np.clip(ijk[..., 2], 0, shape[2] - 1)

    masks = {"truth": case.truth[k], "coarse": case.coarse[k], "refined": refined[k]}
    colors = {"truth": ltr.TRUTH_COLOR, "coarse": ltr.COARSE_COLOR, "refined": ltr.REFINED_COLOR}
    edges = {name: _near_boundary(mask) for name, mask in masks.items()}
    counts = {}
    for name, mask in masks.items():
        pixels = st.color_pixels(rgb, colors[name]) & inside
        counts[name] = int(pixels.sum())
        assert counts[name] > 50, f"no {name} outline drawn ({counts[name]} pixels)"
        # Every pixel of the colour lies on the segment's edge...
        on_edge = edges[name][jj[pixels], ii[pixels]].mean()
        assert on_edge > 0.97, f"{name}: {1 - on_edge:.1%} of its outline pixels are away from the segment's edge"
        # ...and the outline runs along the whole edge, except where another outline covers it.
        hit = np.zeros(mask.shape, dtype=bool)
        hit[jj[pixels], ii[pixels]] = True
        inner_edge = mask & ~_grow_shrink(mask)[1]
        covered = np.logical_or.reduce([edges[other] for other in masks if other != name])
        exposed = inner_edge & ~covered
        if exposed.sum() >= 5:
            seen = _grow(hit, 1)[exposed].mean()
            assert seen > 0.9, f"{name}: outline missing along {1 - seen:.0%} of its uncovered edge"

    # Outlines only: deep inside all three segments the CT shows through, grey.
    core = case.truth[k] & case.coarse[k] & refined[k]
    for _ in range(2):
        core = core & ~_near_boundary(core)
    deep = core[jj, ii] & inside
    assert deep.sum() > 500, "test setup: no interior left to look at"
    interior = rgb[deep].astype(int)
    assert np.abs(interior - interior.mean(axis=1, keepdims=True)).max() <= 2, "segments are filled, not outlined"

    # The liver segment keeps its own filled display: tinted, not grey, away from the tumour.
    tumour = case.coarse[k] | refined[k] | case.truth[k]
    liver_only = case.liver[k] & ~_near_boundary(case.liver[k]) & ~_grow(tumour, 3)
    tinted = rgb[liver_only[jj, ii] & inside].astype(int)
    assert len(tinted) > 500 and np.median(tinted[:, 0] - tinted[:, 2]) > 8, "the liver segment lost its fill"


def _magenta(rgb: np.ndarray) -> np.ndarray:
    """Pixels tinted magenta (red and blue well above green), as the unsure fill over grey CT."""
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    return (r - g > 60) & (b - g > 60)


def _turned_magenta(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Pixels that a magenta fill tinted between two renders: red and blue rose well above green.
    Measured as a change, since under the fill lies the liver segment's own tinted fill, not grey
    (over it, an absolute threshold depends on the blending's last unit: 60 against 61)."""
    dr, dg, db = (after[..., c].astype(int) - before[..., c].astype(int) for c in range(3))
    return (dr - dg > 40) & (db - dg > 40)


def test_unsure_overlay_is_a_fourth_distinct_colour_off_by_default(egl, trained_model):
    """The voxels where the augmented predictions disagree: hidden after a refinement, then drawn
    as a magenta fill where that segment is, under unchanged red, yellow and green outlines."""
    app, case, sc, result = refined_scene(trained_model)
    assert result.uncertainSegmentId is not None, "no unsure overlay after a refinement"
    unsure = scene_nodes.export_segment_mask(sc.segmentationNode, result.uncertainSegmentId, sc.volumeNode)
    k = int(np.argmax(unsure.sum(axis=(1, 2))))
    assert unsure[k].sum() >= 20, "test setup: the refinement is sure everywhere on its best slice"
    slice_s = float((sc.matrix @ np.array([0.0, 0.0, k, 1.0]))[2])
    renderer = st.SliceRenderer(app, SIZE, SIZE)
    renderer.show(sc.volumeNode, slice_s)
    hidden = renderer.render()
    assert _magenta(hidden).sum() == 0, "the unsure overlay is on by default"

    ltr.LiverTumorRefineLogic.setUncertaintyVisible(sc.segmentationNode, result.uncertainSegmentId, True)
    rgb = renderer.render()
    for colour in (ltr.TRUTH_COLOR, ltr.COARSE_COLOR, ltr.REFINED_COLOR):
        before, after = st.color_pixels(hidden, colour).sum(), st.color_pixels(rgb, colour).sum()
        assert after > 50 and after >= 0.9 * before, f"the {colour} outline lost pixels under the overlay: {before} -> {after}"
    magenta = _turned_magenta(hidden, rgb)
    assert magenta.sum() > 100, f"the unsure overlay is not drawn ({magenta.sum()} magenta pixels)"
    rows, cols = np.nonzero(magenta)
    ijk = renderer.pixel_to_ijk(sc.volumeNode, rows, cols)
    near = _grow(unsure[k], 1)
    inside = (ijk[:, 1] >= 0) & (ijk[:, 1] < near.shape[0]) & (ijk[:, 2] >= 0) & (ijk[:, 2] < near.shape[1])
    on = near[ijk[inside, 1], ijk[inside, 2]].mean()
    assert inside.all() and on > 0.97, f"{1 - on:.1%} of the magenta pixels are away from the unsure voxels"
