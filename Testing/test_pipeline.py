"""The one engine entry point (``RefinePipeline``), the coarse-source registry, the device policy
and the progress type that every front end shares."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import blob_case
from LiverTumorRefineLib import api, device, pipeline
from LiverTumorRefineLib.coarse import sources
from LiverTumorRefineLib.config import SEEDED_FIRST_TTA, SEEDED_LATER_TTA, SEEDED_PASSES, TTA
from LiverTumorRefineLib.errors import RefineCancelled, RefineError
from LiverTumorRefineLib.pipeline import RefinePipeline
from LiverTumorRefineLib.progress import part, report
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

RAS_TO_LPS_FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # an RAS-ordered grid


def volumes(seed: int, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)):
    case = blob_case(seed)
    geometry = Geometry(tuple(reversed(case.spacing_zyx)), (0.0, 0.0, 0.0), tuple(direction))
    return case, Volume(case.image, geometry), Volume(case.coarse.astype(np.uint8), geometry)


def test_volumes_and_the_refiner_give_the_same_mask(trained_model):
    case, image, coarse = volumes(101)
    result = RefinePipeline(trained_model, device="cpu", min_kept=0.0).run(image, coarse)
    direct = Refiner(trained_model, device="cpu", min_kept=0.0).refine(case.image, case.coarse, case.spacing_zyx)
    assert np.array_equal(result.refined_mask, direct.mask)
    assert result.stats["voxels_changed"] == direct.stats["voxels_changed"] > 0
    assert np.array_equal(result.coarse_mask, case.coarse) and result.notes == [] and result.metrics is None


def test_any_orientation_comes_back_on_its_own_grid(trained_model):
    """A volume stored RAS is refined on its axial LPS reordering and returned in its own order."""
    case, image, coarse = volumes(102)
    lps = RefinePipeline(trained_model, device="cpu", min_kept=0.0).run(image, coarse).refined_mask
    ras_image = io.reoriented(image, "RAS")
    ras_coarse = io.reoriented(coarse, "RAS")
    assert io.orientation(ras_image.geometry.direction) == "RAS"
    result = RefinePipeline(trained_model, device="cpu", min_kept=0.0).run(ras_image, ras_coarse)
    assert result.refined.geometry == ras_image.geometry
    back = io.reoriented(result.refined, "LPS").array.astype(bool)
    assert np.array_equal(back, lps)


def test_label_map_keeps_its_other_labels_and_truth_gives_metrics(trained_model):
    case, image, coarse = volumes(103)
    labels = np.where(case.coarse, 2, 1).astype(np.uint8)  # LiTS: everything liver, the coarse tumour 2
    result = RefinePipeline(trained_model, device="cpu", min_kept=0.0).run(
        image, coarse.with_array(labels), truth=case.truth)
    assert result.label == 2
    assert set(np.unique(result.refined.array)) <= {1, 2}
    assert np.array_equal(result.refined.array == 2, result.refined_mask)
    assert result.metrics["refined"]["dice"] > result.metrics["coarse"]["dice"]


def test_mask_and_source_are_exclusive(trained_model):
    _, image, coarse = volumes(104)
    pipe = RefinePipeline(trained_model, device="cpu")
    with pytest.raises(RefineError, match="either a coarse mask or a coarse source"):
        pipe.run(image, coarse, source="seeds", seeds=[(0.0, 0.0, 0.0)])
    with pytest.raises(RefineError, match="either a coarse mask or a coarse source"):
        pipe.run(image)
    with pytest.raises(RefineError, match="grids differ"):
        pipe.run(image, Volume(np.zeros((3, 3, 3), np.uint8), image.geometry))


def test_seed_source_goes_through_the_registry(trained_model):
    case, image, _ = volumes(105)
    centre = np.argwhere(case.truth).mean(axis=0)  # z, y, x voxel
    lps = np.array(image.geometry.origin) + np.array(image.geometry.spacing) * centre[::-1]
    seed_ras = (-lps[0], -lps[1], lps[2])
    result = RefinePipeline(trained_model, device="cpu").run(image, source="seeds", seeds=[seed_ras])
    assert result.coarse_mask.any() and result.stats["coarse_source"] == "seeds"
    assert "coarse" in result.stats["seconds"]
    assert result.stats["passes"] == SEEDED_PASSES == 2  # a click-made mask is refined twice
    # ... both passes in fewer orientations than an existing mask's, as a click's (config.SEEDED_FIRST_TTA,
    # SEEDED_LATER_TTA)
    assert result.stats["tta"] == SEEDED_FIRST_TTA == 2 < TTA and result.stats["later_tta"] == SEEDED_LATER_TTA == 2
    from_mask = RefinePipeline(trained_model, device="cpu").run(image, Volume(result.coarse_mask.astype(np.uint8),
                                                                               image.geometry))
    assert "passes" not in from_mask.stats and from_mask.stats["tta"] == TTA  # an existing mask once, in TTA orientations
    # the intensity gate on an existing mask and on a click-made one, unless switched off
    assert "intensity_gate" in from_mask.stats and "intensity_gate" in result.stats
    ungated = RefinePipeline(trained_model, device="cpu", intensity_gate=False).run(image, source="seeds",
                                                                                   seeds=[seed_ras])
    assert "intensity_gate" not in ungated.stats
    with pytest.raises(RefineError, match="No seed points"):
        RefinePipeline(trained_model, device="cpu").run(image, source="seeds", seeds=[])


def test_registry_names_aliases_and_errors():
    assert [s.name for s in sources.SOURCES] == ["mask", "seeds", "automatic", "totalsegmentator"]
    assert sources.source_named("auto").name == "automatic"
    with pytest.raises(RefineError, match="Unknown coarse source 'magic'.*mask, seeds, automatic, totalsegmentator"):
        sources.source_named("magic")
    assert api.COARSE_SOURCES == ("seeds", "automatic", "totalsegmentator")
    from LiverTumorRefineLib.scene import logic

    assert logic.COARSE_SEGMENT_NAMES == {s.name: s.segment_name for s in sources.SOURCES if s.segment_name}


def test_device_policy():
    assert device.check_device("CPU") == "cpu"
    assert device.check_device("Auto") == "auto"
    with pytest.raises(RefineError, match="Unknown device 'tpu'"):
        device.check_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RefineError, match="no CUDA GPU"):
            device.check_device("gpu")
    assert device.resolve_device("cpu").type == "cpu"


def test_gpu_out_of_memory_falls_back_once_to_the_cpu():
    calls, notes = [], []

    def run(name):
        calls.append(name)
        if name != "cpu":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert device.with_cpu_fallback(run, "cuda", "refinement", notes) == "done"
    assert calls == ["cuda", "cpu"] and len(notes) == 1 and "refinement ran on the CPU" in notes[0]
    def always_oom(name):
        calls.append(name)
        raise RuntimeError("CUDA out of memory.")

    calls.clear()
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        device.with_cpu_fallback(always_oom, "cpu", "refinement", [])  # nowhere to fall back to
    assert calls == ["cpu"]

    def bug(name):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        device.with_cpu_fallback(bug, "cuda", "refinement", [])


def test_pipeline_refinement_falls_back_to_the_cpu(trained_model, monkeypatch):
    _, image, coarse = volumes(106)
    real = pipeline.make_refiner

    class OomRefiner:
        device = "cuda"

        def refine(self, *args, **kwargs):
            raise RuntimeError("CUDA out of memory.")

    monkeypatch.setattr(pipeline, "make_refiner", lambda w, d, o: real(w, "cpu", o) if d == "cpu" else OomRefiner())
    pipe = RefinePipeline(trained_model, device="auto")
    pipe.device = "cuda"  # as on a machine with a GPU
    result = pipe.run(image, coarse)
    assert result.stats["device"] == "cpu" and len(result.notes) == 1 and "GPU ran out of memory" in result.notes[0]


def test_progress_part_and_cancel():
    seen = []
    sub = part(lambda f, m: seen.append((round(f, 3), m)), 0.3, 0.9, "coarse: ")
    sub(0.0, "a")
    sub(0.5, "b")
    sub(1.0, "c")
    assert seen == [(0.3, "coarse: a"), (0.6, "coarse: b"), (0.9, "coarse: c")]
    assert part(None, 0, 1) is None
    report(None, 0.5, "nobody listens")
    with pytest.raises(RefineCancelled):
        report(lambda f, m: False, 0.5, "stop")


def test_pipeline_progress_is_monotonic_and_cancellable(trained_model):
    _, image, coarse = volumes(107)
    seen = []
    RefinePipeline(trained_model, device="cpu").run(image, coarse, progress=lambda f, m: seen.append(f))
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    with pytest.raises(RefineCancelled):
        RefinePipeline(trained_model, device="cpu").run(image, coarse, progress=lambda f, m: f < 0.5)
