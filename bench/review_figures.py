"""README figures of the lesion review (issue 13) on LiTS 117, from the installed wheel:

* ``lesion_review_overlays.png``: Slicer's own slice view (offscreen, slicer-core), after a
  refinement through the module's Logic: reference red, coarse yellow, refined green and the
  "unsure" overlay magenta, centred and zoomed on the largest lesion by the review's jump;
* ``lits117_qa_sheet.png``: the ``livertumorrefine qa`` sheet of the same case and masks.

    python bench/review_figures.py --out Resources/Screenshots

The coarse mask is the demo's (``simulate_coarse`` with ``demo.COARSE_SEED``); the refinement uses
the shipped model on the CPU. Prints the lesion table and what was drawn.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "LiverTumorRefine"), str(ROOT / "LiverTumorRefine" / "Testing" / "Python")]

import numpy as np  # noqa: E402

from LiverTumorRefineLib import cli  # noqa: E402
from LiverTumorRefineLib.demo import COARSE_SEED  # noqa: E402
from LiverTumorRefineLib.scene import lesions  # noqa: E402
from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
from LiverTumorRefineLib.scene import nodes as scene_nodes  # noqa: E402
from LiverTumorRefineLib.training.coarse_simulator import simulate_coarse  # noqa: E402
from LiverTumorRefineLib.training.datasets import load_lits117  # noqa: E402
from LiverTumorRefineLib.volume import io  # noqa: E402
from LiverTumorRefineLib.volume.geometry import Volume  # noqa: E402
import slicer_testing as st  # noqa: E402

SIZE = 512
SHEET_ROWS_PX = 866  # the legend and the first two rows of tiles (lesions 1-8)


def read_png(path: Path) -> np.ndarray:
    """An RGB PNG as a (height, width, 3) uint8 array, first row at the top (``st.write_png``'s inverse)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
    return np.ascontiguousarray(pixels[::-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "Resources" / "Screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    case = load_lits117()
    spacing = case.image.spacing_zyx
    truth = case.label.array == 2
    coarse = simulate_coarse(truth, spacing, np.random.default_rng(COARSE_SEED), image=case.image.array)

    app = st.make_app()
    # LiTS 117 is LPS with identity direction: in RAS the first two axes point the other way.
    matrix = st.ijk_to_ras(spacing, (0.0, 0.0, 0.0))
    volumeNode = st.add_ct(app.scene, case.image.array, matrix, "LiTS 117")
    segmentationNode = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "LiTS 117 segments")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    coarseId = st.add_segment(segmentationNode, coarse, "Tumour", ltr.COARSE_COLOR, matrix)
    truthNode = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "LiTS 117 reference")
    truthNode.CreateDefaultDisplayNodes()
    truthId = st.add_segment(truthNode, truth, "Tumour reference", ltr.TRUTH_COLOR, matrix)

    logic = ltr.LiverTumorRefineLogic()
    result = logic.refine(volumeNode, segmentationNode, coarseId, truthNode, truthId, device="cpu")
    rows = logic.review.lesions(result.reviewTable)
    print("lesion table:", " | ".join(lesions.COLUMNS))
    for row in rows:
        print("  " + " | ".join(lesions.table_cells(row)))
    print(f"Dice coarse {result.metrics['coarse']['dice']:.3f} refined {result.metrics['refined']['dice']:.3f}")
    if result.uncertainSegmentId is None:
        raise SystemExit("the refinement gave no unsure overlay: the worker does not pass it on")
    logic.setUncertaintyVisible(segmentationNode, result.uncertainSegmentId, True)

    refined = scene_nodes.export_segment_mask(segmentationNode, result.refinedSegmentId, volumeNode)
    unsure = scene_nodes.export_segment_mask(segmentationNode, result.uncertainSegmentId, volumeNode)
    # The largest lesion that still fills most of a zoomed view (under 40 ml).
    largest = max((row for row in rows if row["refined_ml"] < 40), key=lambda row: row["refined_ml"])
    renderer = st.SliceRenderer(app, SIZE, SIZE)
    renderer.show(volumeNode)
    logic.review.jumpToLesion(result.reviewTable, largest["lesion"], [renderer.sliceNode])
    rgb = renderer.render()
    k = int(renderer.pixel_to_ijk(volumeNode, np.array([SIZE // 2]), np.array([SIZE // 2]))[0][0])
    colours = {"reference": ltr.TRUTH_COLOR, "coarse": ltr.COARSE_COLOR, "refined": ltr.REFINED_COLOR,
               "unsure": ltr.UNCERTAIN_COLOR}
    drawn = {name: int(st.color_pixels(rgb, colour).sum()) for name, colour in colours.items() if name != "unsure"}
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    drawn["unsure (magenta fill)"] = int(((r - g > 60) & (b - g > 60)).sum())
    print(f"lesion {largest['lesion']}, slice k={k}: unsure voxels on the slice {int(unsure[k].sum())}, "
          f"refined {int(refined[k].sum())}; pixels drawn per colour {drawn}")
    out.mkdir(parents=True, exist_ok=True)
    st.write_png(rgb, str(out / "lesion_review_overlays.png"))
    sheet = out / "lits117_qa_sheet.png"

    with tempfile.TemporaryDirectory(prefix="ltr-review-figures-") as folder:
        files = {"ct": case.image, "truth": case.label, "coarse": Volume(coarse.astype(np.uint8), case.image.geometry),
                 "refined": Volume(refined.astype(np.uint8), case.image.geometry)}
        paths = {}
        for name, volume in files.items():
            paths[name] = os.path.join(folder, f"{name}.nii.gz")
            io.write_volume(volume, paths[name], force=True)
        code = cli.main(["qa", "--image", paths["ct"], "--truth", paths["truth"], "--coarse", paths["coarse"],
                         "--refined", paths["refined"], "--out", str(sheet), "--force"])
    if code == 0:  # the sheet holds a tile for each of the 55 lesions: README shows the first rows
        full = read_png(sheet)
        st.write_png(full[:SHEET_ROWS_PX], str(sheet))
        print(f"qa sheet {full.shape[1]} x {full.shape[0]} px, kept the top {SHEET_ROWS_PX} px")
    print(f"wrote {out / 'lesion_review_overlays.png'} and {sheet} (qa exit {code})")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
