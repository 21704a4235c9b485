"""The learned click model: click maps, simulated corrective clicks, the segmenter with a tiny
trained model, the shipped weights, and negative clicks on the command line and in seed files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import ball_mask
from LiverTumorRefineLib import cli
from LiverTumorRefineLib.coarse import clicks
from LiverTumorRefineLib.coarse import clicknet
from LiverTumorRefineLib.coarse.points import parse_signed_seeds
from LiverTumorRefineLib.config import NetConfig
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine import weights
from LiverTumorRefineLib.training import clicktrain
from LiverTumorRefineLib.training.phantom import Case
from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume

CFG = clicknet.ClickConfig(crop_px=32, pixel_mm=2.0, reach_mm=20.0)
TINY = NetConfig(base_channels=4, depth=2, path_blocks=(1, 1), mask_prior=False)
SPACING = (2.5, 1.0, 1.0)


def test_click_maps_peak_at_the_click_with_the_negative_channels_apart():
    z = np.array([-5.0, 0.0, 5.0])
    y = x = np.arange(-10.0, 11.0)
    maps = clicknet.click_maps(z, y, x, [(0.0, 2.0, -3.0)], [], CFG)
    assert maps.shape == (3, 4, 21, 21)
    gaussian = maps[:, 0]
    peak = np.unravel_index(int(gaussian.argmax()), gaussian.shape)
    assert (z[peak[0]], y[peak[1]], x[peak[2]]) == (0.0, 2.0, -3.0) and float(gaussian.max()) == pytest.approx(1.0)
    # 3D distance: 5 mm above and 4 mm aside
    assert float(gaussian[0, 12 + 4, 7]) == pytest.approx(np.exp(-(25 + 16) / (2 * CFG.sigma_mm ** 2)), rel=1e-5)
    assert float(maps[0, 1, 12, 7]) == pytest.approx(1 - 5 / CFG.ramp_mm, rel=1e-5)  # the ramp reaches far
    assert float(maps[:, 2:].abs().max()) == 0.0  # no negative click, nothing in its channels
    both = clicknet.click_maps(z, y, x, [(0.0, 2.0, -3.0)], [(5.0, -8.0, 8.0)], CFG)
    assert torch.equal(both[:, :2], maps[:, :2])  # a negative click leaves the positive channels alone
    assert float(both[2, 2, 2, 18]) == pytest.approx(1.0) and float(both[2, 0, 2, 18]) < 0.01


def ball(shape, centre, radius):
    return ball_mask(shape, centre, radius, SPACING)


def test_corrective_click_lands_in_the_largest_error_with_its_sign():
    shape = (20, 60, 60)
    truth = ball(shape, (10, 30, 30), 12)
    missed = truth & (np.indices(shape)[2] > 36)  # a large missed part on the right
    leak = ball(shape, (10, 30, 8), 4) & ~truth  # a smaller leak on the left
    found = clicks.corrective_click(truth, (truth & ~missed) | leak, SPACING)
    assert found is not None
    voxel, positive = found
    assert positive and missed[voxel]
    big_leak = ball(shape, (10, 30, 52), 7) & ~truth
    small_miss = truth & (np.indices(shape)[2] < 20)
    voxel, positive = clicks.corrective_click(truth, (truth & ~small_miss) | big_leak, SPACING)
    assert not positive and big_leak[voxel]
    # the deepest point of the region, not its edge
    depth = ndimage.distance_transform_edt(big_leak, sampling=SPACING)
    assert depth[voxel] == pytest.approx(depth.max())
    assert clicks.corrective_click(truth, truth, SPACING) is None


def lesion_case(seed: int) -> Case:
    """A hypodense sphere (radius 7-11 mm) in noisy liver-like tissue."""
    rng = np.random.default_rng(seed)
    shape = (24, 64, 64)
    centre = (12 + rng.integers(-2, 3), 32 + rng.integers(-5, 6), 32 + rng.integers(-5, 6))
    truth = ball(shape, centre, rng.uniform(7, 11))
    image = np.where(truth, 40.0, 100.0) + rng.normal(0, 10, shape)
    geometry = Geometry(spacing=SPACING[::-1])
    return Case(f"sphere{seed}", Volume(image.astype(np.float32), geometry),
                Volume((truth * 2).astype(np.uint8), geometry))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: a second thread only waits on a busy machine
    torch.manual_seed(0)
    cfg = clicktrain.ClickTrainConfig(steps=120, minutes=10, batch_size=8, warmup_steps=10, epoch_steps=120,
                                      refresh_at=(), click=CFG, net=TINY, lr=5e-3)
    rng = np.random.default_rng(0)
    crops = []
    for seed in range(6):
        for crop in clicktrain.lesion_crops(lesion_case(seed), cfg, rng):
            clicktrain.add_simulated_scenarios(crop, CFG, rng)
            crops.append(crop)
    out = tmp_path_factory.mktemp("clicks")
    try:
        yield clicktrain.train_clicks(cfg, out, log=lambda _: None, crops=crops, val=crops[:2])
    finally:
        torch.set_num_threads(threads)


def test_segmenter_with_a_tiny_trained_model_gives_a_connected_lesion_at_the_click(tiny_model):
    segmenter = clicknet.ClickSegmenter(tiny_model)
    case = lesion_case(99)
    truth = case.label.array == 2
    click = tuple(int(v) for v in np.argwhere(truth).mean(axis=0).round())
    result = segmenter.segment(case.image.array, SPACING, [click])
    whole = result.paste(truth.shape)
    assert whole[click]
    _, n = ndimage.label(whole, structure=np.ones((3, 3, 3), bool))
    assert n == 1
    dice = 2 * (whole & truth).sum() / (whole.sum() + truth.sum())
    assert dice > 0.5, dice  # it learned the lesion, not just the click voxel
    negative = tuple(int(v) for v in np.argwhere(whole)[0])
    again = segmenter.segment(case.image.array, SPACING, [click], [negative]).paste(truth.shape)
    assert again[click] and not again[negative]


def test_click_training_runs_on_the_device_it_names_and_refuses_one_it_cannot_use(tiny_model, tmp_path):
    assert clicknet.load_click_model(tiny_model).meta["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = clicktrain.ClickTrainConfig(steps=1, click=CFG, net=TINY)
    unusable = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in unusable:  # refused before any crop is made or anything is written
        with pytest.raises(RefineError, match="choose auto"):
            clicktrain.train_clicks(cfg, tmp_path / device, log=lambda _: None, crops=[], val=[], device=device)
        assert not (tmp_path / device).exists()
    with pytest.raises(SystemExit):
        clicktrain.main(["--out", str(tmp_path / "cli"), "--device", "tpu"])


def test_click_model_file_is_hash_checked(tiny_model, tmp_path):
    model = clicknet.load_click_model(tiny_model)
    assert model.click_config == CFG and model.net_config == TINY
    tampered = tmp_path / "m.pt"
    tampered.write_bytes(tiny_model.read_bytes() + b"x")
    (tmp_path / "m.pt.sha256").write_text(weights.sha256_of(tiny_model))
    with pytest.raises(RefineError, match="SHA-256"):
        clicknet.load_click_model(tampered)


def test_shipped_click_model_loads_and_matches_its_pinned_hash():
    path = weights.default_weights_path(clicknet.DEFAULT_MODEL)
    digest = weights.sha256_of(path)
    assert weights.SHIPPED_SHA256[clicknet.DEFAULT_MODEL] == digest
    assert (path.parent / (path.name + ".sha256")).read_text().split()[0] == digest
    model = clicknet.load_click_model()
    assert model.click_config.in_channels == model.stem[0][0].in_channels
    assert path.stat().st_size < 5_000_000


def test_markups_file_with_negative_points(tmp_path):
    path = tmp_path / "clicks.mrk.json"
    points = [{"label": "F-1", "position": [10.0, 20.0, 30.0]},
              {"label": "neg-1", "position": [11.0, 21.0, 31.0]},
              {"label": "F-2", "description": "Negative: vessel", "position": [12.0, 22.0, 32.0]}]
    path.write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": points}]}))
    positive, negative = parse_signed_seeds(str(path))
    assert positive == [(10.0, 20.0, 30.0)]
    assert negative == [(11.0, 21.0, 31.0), (12.0, 22.0, 32.0)]
    only_negative = tmp_path / "neg.mrk.json"
    only_negative.write_text(json.dumps({"markups": [{"name": "Negative clicks", "coordinateSystem": "LPS",
                                                      "controlPoints": points[:1]}]}))
    with pytest.raises(RefineError, match="only negative"):
        parse_signed_seeds(str(only_negative))


def ct_file(tmp_path):
    """A CT file with one hypodense lesion, and the RAS string of a voxel."""
    case = lesion_case(7)
    path = tmp_path / "ct.nii.gz"
    io.write_volume(case.image, path)
    reference = io.to_sitk(case.image)

    def ras(voxel):
        x, y, z = reference.TransformIndexToPhysicalPoint(tuple(int(v) for v in voxel[::-1]))
        return f"{-x:.2f},{-y:.2f},{z:.2f}"  # SimpleITK is LPS
    return path, case.label.array == 2, ras


def test_cli_negative_seeds_run_the_click_model_and_keep_the_point_out(tmp_path, capsys):
    path, truth, ras = ct_file(tmp_path)
    inside = tuple(int(v) for v in np.argwhere(truth).mean(axis=0).round())
    outside = (inside[0], inside[1], inside[2] + 14)  # liver beside the lesion
    code = cli.main(["refine", "--image", str(path), "--seeds", ras(inside), "--negative-seeds", ras(outside),
                     "--out", str(tmp_path / "refined.nii.gz"), "--coarse-out", str(tmp_path / "coarse.nii.gz"),
                     "--device", "cpu", "--tta", "1"])
    assert code == 0, capsys.readouterr().err
    coarse = io.read_volume(tmp_path / "coarse.nii.gz").array > 0
    assert coarse[inside] and not coarse[outside]


def test_cli_negative_seed_errors(tmp_path, capsys):
    path, truth, ras = ct_file(tmp_path)
    inside = ras(tuple(int(v) for v in np.argwhere(truth).mean(axis=0).round()))
    base = ["refine", "--image", str(path), "--out", str(tmp_path / "o.nii.gz")]
    for extra, message in ((["--seeds", inside, "--negative-seeds", "1,2"], "not R,A,S"),
                           (["--seeds", inside, "--negative-seeds", "900,900,900"], "outside the CT"),
                           (["--auto-coarse", "--negative-seeds", inside], "go with --seeds"),
                           (["--seeds", inside, "--negative-seeds", inside, "--seed-method", "rays"],
                            "cannot use --negative-seeds")):
        code = cli.main(base + extra)
        assert code == 2 and message in capsys.readouterr().err, extra
    assert not (tmp_path / "o.nii.gz").exists()


# ------------------------------------------------------------------ the hybrid: ray grower, model corrections
def two_lesions(gap_mm: float = 4.0):
    """A CT with two hypodense spheres side by side (radius 8 mm, ``gap_mm`` of liver between)."""
    rng = np.random.default_rng(3)
    shape = (24, 64, 80)
    a, b = (12, 32, 24), (12, 32, 24 + int(16 + gap_mm))
    first, second = ball(shape, a, 8), ball(shape, b, 8)
    image = np.where(first | second, 40.0, 100.0) + rng.normal(0, 8, shape)
    return image.astype(np.float32), first, second, a


def test_hybrid_first_click_is_the_ray_growers_lesion_and_the_models_near_the_click(monkeypatch):
    """Click 1 is the ray grower's lesion ("none"), plus, as shipped ("guarded"), what the click
    model's one-click lesion adds near the click as a positive correction would."""
    from LiverTumorRefineLib.coarse.seeded import seed_labels

    assert clicks.FIRST_CLICK_MODEL == "guarded"
    case = lesion_case(5)
    truth = case.label.array == 2
    click = tuple(int(v) for v in np.argwhere(truth).mean(axis=0).round())
    segmenter = clicks.shipped_segmenter()
    grown = seed_labels(case.image.array, [click], SPACING) > 0
    first = {}
    for setting in ("none", "guarded"):
        monkeypatch.setattr(clicks, "FIRST_CLICK_MODEL", setting)
        lesion, model = clicks.hybrid_lesion(segmenter, case.image.array, SPACING, clicks.LesionClicks((click,)))
        assert model is None  # one click: no corrections to read
        first[setting] = lesion.paste(truth.shape)
    assert np.array_equal(first["none"], grown)
    added = first["guarded"] & ~grown
    assert not (grown & ~first["guarded"]).any()  # nothing of the grower's lesion is lost
    assert not (added & ~ball(truth.shape, click, clicks.correction_reach(grown, SPACING))).any()


def test_a_positive_click_adds_the_models_lesion_connected_to_it_where_the_image_looks_like_the_lesion():
    """``guarded_addition``: the model's lesion within reach of the click and connected to it, but
    not a part of it that reads as liver, nor anything outside the cell."""
    rng = np.random.default_rng(4)
    shape = (16, 48, 80)
    click = (8, 24, 20)
    lesion = ball(shape, click, 9)
    far = ball(shape, (8, 24, 62), 9)  # lesion-like too, but not connected to the click's part
    bulge = ball(shape, (8, 24, 33), 6) & ~lesion  # the model's leak into liver beside the lesion
    image = (np.where(lesion | far, 40.0, 100.0) + rng.normal(0, 5, shape)).astype(np.float32)
    model = lesion | far | bulge
    cell = np.ones(shape, bool)
    added = clicks.guarded_addition(image, SPACING, model, click, 30.0, cell)
    assert added[click] and (added & lesion).sum() >= 0.9 * lesion.sum()
    assert not (added & far).any()  # not connected to the click
    assert (added & bulge).sum() <= 0.05 * bulge.sum()  # reads as liver
    assert not (clicks.guarded_addition(image, SPACING, model, click, 4.0, cell) & ~ball(shape, click, 4.0)).any()
    half = np.zeros(shape, bool)
    half[:, :, :20] = True
    assert not (clicks.guarded_addition(image, SPACING, model, click, 30.0, half) & ~half).any()


def test_a_positive_correction_on_a_margin_that_reads_as_liver_adds_the_models_lesion_near_the_click(monkeypatch):
    """``corrective_addition``: where the clicked voxel itself reads as liver (a missed margin), the
    intensity guard refuses the whole correction; the model's lesion within ``CLICK_TRUST_MM`` of
    the click still joins, and no further: the guard holds beyond it."""
    rng = np.random.default_rng(5)
    shape = (16, 48, 80)
    core = ball(shape, (8, 24, 30), 8)
    margin = ball(shape, (8, 24, 30), 16) & ~core  # the model's lesion, but reading as liver
    image = (np.where(core, 40.0, 100.0) + rng.normal(0, 5, shape)).astype(np.float32)
    model = core | margin
    click = (8, 24, 44)  # in the margin, 14 mm from the centre
    cell = np.ones(shape, bool)
    monkeypatch.setattr(clicks, "CLICK_TRUST_MM", 0.0)
    guarded = clicks.corrective_addition(image, SPACING, model, click, 30.0, cell)
    assert (guarded & margin).sum() <= 1  # only the clicked voxel: the click does nothing visible
    monkeypatch.setattr(clicks, "CLICK_TRUST_MM", 5.0)
    added = clicks.corrective_addition(image, SPACING, model, click, 30.0, cell)
    near = ball(shape, click, 5.0) & margin
    assert (added & near).sum() == near.sum()
    assert not (added & margin & ~ball(shape, click, 5.0)).any()
    assert (added & core).sum() == (guarded & core).sum()  # the guarded part is as before


def test_first_click_switch_needs_a_model_lesion_that_is_not_tiny(monkeypatch):
    monkeypatch.setattr(clicks, "FIRST_CLICK_MIN_MM", 10.0)  # a 10 mm sphere: 524 mm3
    assert not clicks.not_tiny(ball((10, 20, 20), (5, 10, 10), 4.5), SPACING)  # about 380 mm3
    assert clicks.not_tiny(ball((10, 20, 20), (5, 10, 10), 5.5), SPACING)  # about 700 mm3
    halved = tuple(s / 2 for s in SPACING)
    assert not clicks.not_tiny(ball((10, 20, 20), (5, 10, 10), 5.5), halved)  # same voxels, 1/8 the volume


def test_hybrid_positive_correction_adds_only_near_its_click():
    image, first, _, a = two_lesions(gap_mm=10.0)
    segmenter = clicks.shipped_segmenter()
    one = clicks.LesionClicks((a,))
    before = clicks.hybrid_lesion(segmenter, image, SPACING, one)[0].paste(image.shape)
    missed = np.argwhere(first & ~before)
    click = tuple(int(v) for v in (missed[len(missed) // 2] if len(missed) else np.argwhere(first)[0]))
    after = clicks.hybrid_lesion(segmenter, image, SPACING, one.with_click(click, True))[0].paste(image.shape)
    assert after[click] and (after | before).sum() >= before.sum()
    changed = after != before
    assert changed.any()
    reach = clicks.correction_reach(before, SPACING)
    assert not (changed & ~ball(image.shape, click, reach)).any()  # local to the click


@pytest.mark.parametrize("limit", [0.5, 3.0, 10.0])
def test_distance_near_is_the_whole_crop_transform_within_its_limit(limit):
    rng = np.random.default_rng(7)
    spacing = (2.5, 0.8, 0.7)
    for shape, box in (((30, 60, 70), (slice(10, 14), slice(20, 31), slice(30, 40))),
                       ((12, 40, 40), (slice(0, 3), slice(35, 40), slice(0, 6)))):  # the second at the crop's edge
        mask = np.zeros(shape, dtype=bool)
        mask[box] = rng.random(mask[box].shape) < 0.3
        whole = ndimage.distance_transform_edt(~mask, sampling=spacing)
        near = clicks.distance_near(mask, spacing, limit)
        within = whole <= limit
        assert np.array_equal(near[within], whole[within])  # the same arithmetic on the smaller box
        assert (near[~within] > limit).all()  # beyond the limit: exact or inf, never within it
        assert np.isinf(near).any() and (near <= limit).sum() == within.sum()
    empty = np.zeros((4, 5, 6), dtype=bool)
    assert np.array_equal(clicks.distance_near(empty, spacing, limit),
                          ndimage.distance_transform_edt(~empty, sampling=spacing))


def test_a_correction_reaches_as_far_as_the_lesion_is_large(monkeypatch):
    monkeypatch.setattr(clicks, "CORRECTION_SCALE", 1.0)
    small, large = ball((40, 80, 80), (20, 40, 40), 8.0), ball((40, 80, 80), (20, 40, 40), 30.0)
    assert clicks.correction_reach(small, SPACING) == clicks.CORRECTION_RADIUS_MM  # the fixed radius
    assert abs(clicks.correction_reach(large, SPACING) - 30.0) < 1.0  # the lesion's own radius
    monkeypatch.setattr(clicks, "CORRECTION_SCALE", 0.0)
    assert clicks.correction_reach(large, SPACING) == clicks.CORRECTION_RADIUS_MM


def test_the_growth_budget_has_a_floor_when_the_first_click_found_a_sliver(monkeypatch):
    sliver = ball((40, 80, 80), (20, 40, 40), 3.0)
    monkeypatch.setattr(clicks, "GROWTH_FLOOR", False)
    assert clicks.growth_budget(sliver, SPACING) == int(clicks.GROWTH_LIMIT * sliver.sum())
    monkeypatch.setattr(clicks, "GROWTH_FLOOR", True)
    floor = clicks.growth_budget(sliver, SPACING)
    reach_ball = 4.0 / 3.0 * np.pi * clicks.correction_reach(sliver, SPACING) ** 3 / float(np.prod(SPACING))
    assert floor == int(sliver.sum() + reach_ball) > clicks.GROWTH_LIMIT * sliver.sum()
    large = ball((40, 80, 80), (20, 40, 40), 30.0)  # a lesion whose limit is larger than the floor
    assert clicks.growth_budget(large, SPACING) == int(clicks.GROWTH_LIMIT * large.sum())


def test_negative_click_removes_the_leak_and_keeps_the_lesion():
    shape = (24, 64, 64)
    lesion = ball(shape, (12, 32, 28), 8)
    leak = ball(shape, (12, 32, 42), 6) & ~lesion  # grown on from the lesion's edge
    model = lesion.copy()  # the model sees the lesion only
    click = (12, 32, 44)
    removed = clicks.leak_at(lesion | leak, model, click, [(12, 32, 28)], SPACING, clicks.CORRECTION_RADIUS_MM)
    assert removed[click] and not (removed & lesion).any()
    assert removed.sum() >= 0.9 * leak.sum()
    # far from the click nothing goes, even where the model sees background
    far = ball(shape, (12, 32, 4), 3)
    removed = clicks.leak_at(lesion | leak | far, model, click, [(12, 32, 28)], SPACING, clicks.CORRECTION_RADIUS_MM)
    assert not (removed & far).any()
    # end to end: the negative click is out of the refined lesion, the positive click in
    from LiverTumorRefineLib.refine.refiner import Refiner

    image, first, _, a = two_lesions(gap_mm=20.0)
    segmenter, refiner = clicks.shipped_segmenter(), Refiner(device="cpu")
    one = clicks.LesionClicks((a,))
    _, refined = clicks.click_lesion(segmenter, refiner, image, SPACING, one)
    outside = np.argwhere(refined.paste(image.shape) & ~first)
    negative = tuple(int(v) for v in outside[0]) if len(outside) else (a[0], a[1], a[2] + 9)
    _, again = clicks.click_lesion(segmenter, refiner, image, SPACING, one.with_click(negative, False))
    whole = again.paste(image.shape)
    assert whole[a] and not whole[negative]


def test_hybrid_never_merges_with_an_unclicked_neighbour():
    from LiverTumorRefineLib.refine.refiner import Refiner

    image, first, second, a = two_lesions(gap_mm=3.0)
    segmenter, refiner = clicks.shipped_segmenter(), Refiner(device="cpu")
    one = clicks.LesionClicks((a,))
    toward = (a[0], a[1], a[2] + 6)  # a positive correction on the lesion's side facing the neighbour
    for lesion in (one, one.with_click(toward, True)):
        _, refined = clicks.click_lesion(segmenter, refiner, image, SPACING, lesion)
        whole = refined.paste(image.shape)
        assert whole[a] and (whole & second).sum() <= 0.1 * second.sum(), (whole & second).sum()
    # a positive correction is bounded by the first click's volume (GROWTH_LIMIT)
    coarse = clicks.hybrid_lesion(segmenter, image, SPACING, clicks.LesionClicks((a, (12, 32, 44))))[0]
    first_volume = clicks.hybrid_lesion(segmenter, image, SPACING, one)[0].mask.sum()
    assert coarse.mask.sum() <= clicks.GROWTH_LIMIT * first_volume


def test_a_click_beyond_the_first_clicks_crop_gets_a_crop_of_its_own():
    cfg = clicks.shipped_segmenter().cfg
    shape, first = (30, 200, 200), (15.0, 100.0, 40.0)
    near, far = (15.0, 100.0, 70.0), (15.0, 100.0, 150.0)  # 30 mm and 110 mm from the first click
    assert len(clicknet.click_grids([first, near], shape, SPACING, cfg)) == 1
    grids = clicknet.click_grids([first, near, far], shape, SPACING, cfg)
    assert len(grids) == 2 and grids[1].centre == (15, 100, 150)
    box = clicknet.union_box([g.box(shape) for g in grids])
    assert clicknet.in_box(first, box) is not None and clicknet.in_box(far, box) is not None
    assert clicknet.in_box(far, grids[0].box(shape)) is None  # the first crop alone would drop it



def test_the_click_models_probability_covers_every_clicks_crop():
    image, lesion = elongated_lesion()
    segmenter = clicks.shipped_segmenter()
    first, far = (12.0, 32.0, 25.0), (12.0, 32.0, 110.0)
    one_box, _ = segmenter.lesion_probability(image, SPACING, [first])
    box, both = segmenter.lesion_probability(image, SPACING, [first, far])
    assert one_box[2].stop <= 80 and box[2].stop > 110  # the far click's crop is part of the box
    local = clicknet.in_box(far, box)
    assert both[local] > 0.5  # the model, centred on the far click, sees the lesion there
    grid = clicknet.click_grids([first, far], image.shape, SPACING, segmenter.cfg)[0]
    _, prob = segmenter.probabilities(image, SPACING, [first, far], grid=grid)
    first_crop = clicknet.paste_back(prob, grid, box, SPACING, segmenter.cfg)  # the first crop, both clicks
    z = slice(grid.z0 - box[0].start, grid.z1 - box[0].start)
    assert (both[z] >= first_crop - 1e-6).all() and (both[z] > first_crop + 0.5).any()  # the larger of the two
    whole = segmenter.segment(image, SPACING, [first, far]).paste(image.shape)
    assert whole[tuple(int(v) for v in far)] and whole[tuple(int(v) for v in first)]

def elongated_lesion():
    """A CT with one hypodense lesion 110 mm long (a capsule of radius 9 mm along x), longer than a
    click crop (80 mm), and its voxels."""
    rng = np.random.default_rng(4)
    shape = (24, 64, 150)
    z, y, x = np.indices(shape).astype(np.float32) * np.array(SPACING, np.float32)[:, None, None, None]
    along = np.clip(x, 20.0, 130.0)
    lesion = (z - 30.0) ** 2 + (y - 32.0) ** 2 + (x - along) ** 2 <= 9.0 ** 2
    image = np.where(lesion, 40.0, 100.0) + rng.normal(0, 8, shape)
    return image.astype(np.float32), lesion


def test_a_correction_beyond_the_first_clicks_crop_adds_the_missed_part():
    image, lesion = elongated_lesion()
    segmenter = clicks.shipped_segmenter()
    one = clicks.LesionClicks(((12.0, 32.0, 25.0),))  # near one end: the crop ends 40 mm on
    before = clicks.hybrid_lesion(segmenter, image, SPACING, one)[0].paste(image.shape)
    assert not before[:, :, 80:].any()  # beyond the first click's crop
    far = (12, 32, 110)  # 85 mm from the first click, inside the lesion
    after = clicks.hybrid_lesion(segmenter, image, SPACING, one.with_click(far, True))[0].paste(image.shape)
    added = after & ~before
    assert after[far] and added.sum() > 200, added.sum()  # the lesion around the click, not the click alone
    assert (added & lesion).sum() >= 0.8 * added.sum()


def test_a_correction_nearer_a_neighbours_first_click_still_adds_to_its_lesion():
    own, neighbour = (12.0, 32.0, 20.0), (12.0, 32.0, 60.0)
    box = (slice(0, 24), slice(0, 64), slice(0, 80))
    correction = (12.0, 32.0, 45.0)  # nearer the neighbour's first click than the lesion's own
    alone = clicks.nearest_click_cell(box, SPACING, [own], [neighbour])
    both = clicks.nearest_click_cell(box, SPACING, [own, correction], [neighbour])
    assert not alone[12, 32, 45] and both[12, 32, 45] and both[12, 32, 40]
    assert not both[12, 32, 55] and not both[12, 32, 60]  # still off the neighbour's side of the correction
    assert (both >= alone).all()
    # end to end: a large lesion with a small neighbour next to its edge
    shape = (24, 64, 80)
    big, small = ball(shape, (12, 32, 30), 18), ball(shape, (12, 32, 56), 4)
    image = (np.where(big | small, 40.0, 100.0) + np.random.default_rng(5).normal(0, 8, shape)).astype(np.float32)
    lesion, other = clicks.LesionClicks(((12.0, 32.0, 22.0),)), clicks.LesionClicks(((12.0, 32.0, 56.0),))
    edge = (12, 32, 44)  # inside the large lesion, 22 mm from its click and 12 mm from the neighbour's
    segmenter = clicks.shipped_segmenter()
    corrected = clicks.hybrid_lesion(segmenter, image, SPACING, lesion.with_click(edge, True), [other])[0]
    whole = corrected.paste(shape)
    assert whole[edge] and whole[12, 32, 40] and (whole & small).sum() <= 0.1 * small.sum()


def test_the_lesion_cache_keys_results_by_the_named_ct_and_drops_the_oldest():
    from LiverTumorRefineLib.coarse.lesion_cache import LesionCache

    cache = LesionCache(size=2)
    lesion = clicks.LesionClicks(((1.0, 2.0, 3.0),))
    assert cache.key((4, 5, 6), SPACING, "hybrid", None, lesion, []) is None  # no CT named: nothing kept
    with cache.for_ct("ct-a"):
        first = cache.key((4, 5, 6), SPACING, "hybrid", None, lesion, [])
        with cache.for_ct("ct-b"):  # another CT: another key
            assert cache.key((4, 5, 6), SPACING, "hybrid", None, lesion, []) != first
        assert cache.key((4, 5, 6), SPACING, "hybrid", None, lesion, []) == first  # restored
        other = cache.key((4, 5, 6), SPACING, "hybrid", None, lesion.with_click((1, 2, 4), False), [])
        third = cache.key((4, 5, 6), SPACING, "hybrid", None, lesion, [(9.0, 9.0, 9.0)])
        assert len({first, other, third}) == 3  # a negative click or another lesion's first click: a new key
        cache.put(first, "a")
        cache.put(other, "b")
        assert cache.get(first) == "a"  # now the most recently used
        cache.put(third, "c")  # beyond 2: the least recently used ("b") goes
        assert cache.get(other) is None and cache.get(first) == "a" and cache.get(third) == "c"
    assert cache.ct is None


def test_the_click_model_is_named_by_a_number_never_given_to_another_object():
    """The lesion cache names the click model by ``identity``: an ``id`` is given again once its
    object is freed, so a new model could have matched the old one's results."""
    import gc

    from LiverTumorRefineLib.coarse.lesion_cache import LesionCache, identity

    class Model:
        pass

    first = Model()
    number = identity(first)
    assert identity(first) == number and identity(None) == 0
    del first
    gc.collect()
    assert identity(Model()) != number
    cache, lesion = LesionCache(), clicks.LesionClicks(((1.0, 2.0, 3.0),))
    with cache.for_ct("ct"):
        a, b = Model(), Model()
        assert cache.key((4, 5, 6), SPACING, "hybrid", a, lesion, []) != cache.key((4, 5, 6), SPACING, "hybrid", b,
                                                                                  lesion, [])
        assert identity(clicks.shipped_segmenter()) > 0  # the shipped model can be named


def test_lesion_labels_reuse_unchanged_lesions_on_a_named_ct(monkeypatch):
    from LiverTumorRefineLib.coarse.lesion_cache import LESIONS

    image, first, second, a = two_lesions(gap_mm=20.0)
    b = tuple(int(v) for v in np.argwhere(second).mean(axis=0).round())
    segmenter = clicks.shipped_segmenter()
    lesions = [clicks.LesionClicks((a,)), clicks.LesionClicks((b,))]
    computed = []
    real = clicks.hybrid_lesion
    monkeypatch.setattr(clicks, "hybrid_lesion", lambda *args: computed.append(args[3]) or real(*args))
    plain = clicks.lesion_labels(segmenter, image, SPACING, lesions, method="hybrid")
    LESIONS.clear()
    with LESIONS.for_ct("two lesions"):
        once = clicks.lesion_labels(segmenter, image, SPACING, lesions, method="hybrid")
        again = clicks.lesion_labels(segmenter, image, SPACING, lesions, method="hybrid")
        assert len(computed) == 2 + 2  # the plain run and the first named run; the second reused both
        corrected = [lesions[0].with_click((12, 32, 33), True), lesions[1]]  # a click on lesion 1 only
        updated = clicks.lesion_labels(segmenter, image, SPACING, corrected, method="hybrid")
        assert computed[-1] == corrected[0] and len(computed) == 5  # lesion 2 came from the cache
        reused = clicks.lesion_labels(segmenter, image, SPACING, corrected, method="hybrid")
        assert len(computed) == 5
    LESIONS.clear()
    assert np.array_equal(plain, once) and np.array_equal(once, again) and np.array_equal(updated, reused)
    # the same as computing every lesion afresh
    assert np.array_equal(updated, clicks.lesion_labels(segmenter, image, SPACING, corrected, method="hybrid"))


def test_a_negative_click_far_from_a_lesion_changes_nothing_in_it_and_recomputes_only_the_lesions_near_it(monkeypatch):
    """Beyond ``negative_reach_mm`` of a lesion's click crops a negative click's maps are exactly 0
    there, so the lesion is the same without it; the cache then keeps it through that click."""
    from LiverTumorRefineLib.coarse.lesion_cache import LESIONS

    rng = np.random.default_rng(6)
    shape = (24, 64, 200)
    a, b = (12, 32, 30), (12, 32, 170)  # 140 mm apart: A's crops end 110 mm from B
    first, second = ball(shape, a, 9), ball(shape, b, 9)
    image = (np.where(first | second, 40.0, 100.0) + rng.normal(0, 8, shape)).astype(np.float32)
    segmenter = clicks.shipped_segmenter()
    beside_b = (12, 32, 182)
    lesion_a = clicks.LesionClicks((a, (12, 32, 36)))  # a correction: the model runs
    assert clicks.near_negatives(lesion_a.with_click(beside_b, False), shape, SPACING, segmenter.cfg) == lesion_a
    near_a = (12, 32, 42)
    assert clicks.near_negatives(lesion_a.with_click(near_a, False), shape, SPACING, segmenter.cfg).negative == (near_a,)
    box = clicknet.union_box([g.box(shape) for g in clicknet.click_grids(lesion_a.positive, shape, SPACING,
                                                                         segmenter.cfg)])
    _, without = segmenter.lesion_probability(image, SPACING, lesion_a.positive, (), box)
    _, far = segmenter.lesion_probability(image, SPACING, lesion_a.positive, (beside_b,), box)
    assert np.array_equal(without, far)  # exactly, not nearly
    kept = clicks.hybrid_lesion(segmenter, image, SPACING, lesion_a.with_click(beside_b, False))[0]
    assert np.array_equal(kept.mask, clicks.hybrid_lesion(segmenter, image, SPACING, lesion_a)[0].mask)
    lesions = [lesion_a, clicks.LesionClicks((b,))]
    computed = []
    real = clicks.hybrid_lesion
    monkeypatch.setattr(clicks, "hybrid_lesion", lambda *args: computed.append(args[3]) or real(*args))
    LESIONS.clear()
    with LESIONS.for_ct("far apart"):
        before = clicks.lesion_labels(segmenter, image, SPACING, lesions, method="hybrid")
        negative = [lesion.with_click(beside_b, False) for lesion in lesions]  # as the module sends it: to every lesion
        after = clicks.lesion_labels(segmenter, image, SPACING, negative, method="hybrid")
    LESIONS.clear()
    assert len(computed) == 3 and computed[-1] == negative[1]  # only lesion B again
    assert np.array_equal(before == 1, after == 1)
    assert np.array_equal(after, clicks.lesion_labels(segmenter, image, SPACING, negative, method="hybrid"))


def test_refining_all_clicked_lesions_at_once_keeps_the_hybrids_guards():
    """``ClickedLesions.guard``: on a refinement of the whole coarse mask, each hybrid lesion keeps
    what ``click_lesion`` would keep: its coarse mask, growth within ``REFINE_REACH_MM`` and in its
    cell, and not the leak at a negative click."""
    image, first, second, a = two_lesions(gap_mm=10.0)
    b = tuple(int(v) for v in np.argwhere(second).mean(axis=0).round())
    segmenter = clicks.shipped_segmenter()
    beside = (a[0], a[1] - 12, a[2])  # liver 4 mm above lesion A's edge (radius 8 mm)
    lesions = [clicks.LesionClicks((a, (a[0], a[1], a[2] - 5)), (beside,)), clicks.LesionClicks((b,), (beside,))]
    made = clicks.lesion_results(segmenter, image, SPACING, lesions, method="hybrid")
    coarse = made.labels(image.shape) > 0
    assert np.array_equal(made.guard(coarse, SPACING), coarse)  # an unchanged refinement stays unchanged
    far = ball(image.shape, (a[0], a[1] + 20, a[2]), 3)  # 9-15 mm beyond A's edge
    leak = ball(image.shape, beside, 3) | ball(image.shape, (a[0], a[1] - 9, a[2]), 2)  # a leak reaching the click
    guarded = made.guard(coarse | far | leak, SPACING)
    assert not (guarded & far).any() and not guarded[beside]
    assert (guarded & leak & ~coarse).sum() < 0.5 * (leak & ~coarse).sum()
    assert np.array_equal(guarded & coarse, coarse)
    distance = ndimage.distance_transform_edt(~coarse, sampling=SPACING)
    assert (distance[guarded] <= clicks.REFINE_REACH_MM).all()
    model_only = clicks.lesion_results(segmenter, image, SPACING, lesions, method="model")
    assert np.array_equal(model_only.guard(coarse | far, SPACING), coarse | far)  # the model alone: no guards


def test_a_seeded_job_applies_the_hybrids_guards_to_its_refinement(monkeypatch):
    """``refine --seeds``, the API and the Slicer worker refine all lesions at once, then guard each as
    a click does: with no reach allowed, nothing grows past the coarse mask."""
    from LiverTumorRefineLib.coarse.points import voxel_to_ras
    from LiverTumorRefineLib.pipeline import RefinePipeline

    case = lesion_case(7)
    truth = case.label.array == 2
    click = tuple(int(v) for v in np.argwhere(truth).mean(axis=0).round())
    pipeline = RefinePipeline(device="cpu", tta=1)
    seeds = [voxel_to_ras(np.array(click), case.image)]
    grown = pipeline.run(case.image, source="seeds", seeds=seeds)
    monkeypatch.setattr(clicks, "REFINE_REACH_MM", 0.0)
    held = pipeline.run(case.image, source="seeds", seeds=seeds)
    assert (grown.refined_mask & ~grown.coarse_mask).any()  # the refiner grows this lesion ...
    assert not (held.refined_mask & ~held.coarse_mask).any()  # ... and the guard holds it
    assert held.stats["voxels_changed"] == int((held.refined_mask != held.coarse_mask).sum())


def test_a_one_click_hybrid_lesion_ignores_negative_clicks_outside_its_crop():
    """The grower and the model's one-click view see no negative click, and the hybrid applies only
    those in the lesion's box: one outside it, though within ``negative_reach_mm``, changes nothing."""
    image, first, _, a = two_lesions(gap_mm=4.0)
    segmenter = clicks.shipped_segmenter()
    box = clicknet.union_box([g.box(image.shape) for g in clicknet.click_grids([a], image.shape, SPACING,
                                                                               segmenter.cfg)])
    outside = (a[0], a[1], box[2].stop + 2)  # just beyond the crop, well within 75 mm
    assert clicknet.in_box(outside, box) is None and outside[2] < image.shape[2]
    lesion = clicks.LesionClicks((a,), (outside,))
    assert clicks.near_negatives(lesion, image.shape, SPACING, segmenter.cfg, "hybrid").negative == ()
    assert clicks.near_negatives(lesion, image.shape, SPACING, segmenter.cfg, "model").negative == (outside,)
    with_it = clicks.hybrid_lesion(segmenter, image, SPACING, lesion)[0]
    assert np.array_equal(with_it.mask, clicks.hybrid_lesion(segmenter, image, SPACING, clicks.LesionClicks((a,)))[0].mask)


def test_the_first_click_reaches_as_a_correction_of_the_growers_lesion_or_of_the_larger_lesion(monkeypatch):
    small, large = ball((40, 80, 80), (20, 40, 40), 8.0), ball((40, 80, 80), (20, 40, 40), 30.0)
    assert clicks.FIRST_CLICK_REACH == "grown"  # shipped: "model" merged a real lesion (README)
    assert clicks.first_click_reach(small, large, SPACING) == clicks.correction_reach(small, SPACING)
    monkeypatch.setattr(clicks, "FIRST_CLICK_REACH", "model")
    assert abs(clicks.first_click_reach(small, large, SPACING) - 30.0) < 1.0  # the model saw the larger lesion
    assert abs(clicks.first_click_reach(large, small, SPACING) - 30.0) < 1.0


class CountingModel:
    """A network that counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x):
        self.calls += 1
        return self.model(x)


def test_the_click_model_runs_once_per_distinct_input_and_a_correction_reuses_the_first_clicks_view():
    """``ClickSegmenter.seen``: the same network input gives the kept output (a copy); a corrective
    click's one-click view is the first click's; a CT voxel changed in the crop runs it again."""
    image, first, second, a = two_lesions(gap_mm=20.0)
    segmenter = clicknet.ClickSegmenter()
    counting = segmenter.runtime = CountingModel(segmenter.runtime)
    _, once = segmenter.lesion_probability(image, SPACING, [a])
    calls = counting.calls
    _, again = segmenter.lesion_probability(image, SPACING, [a])
    assert counting.calls == calls and np.array_equal(once, again)
    again[:] = 0.0  # the caller's copy: the kept output is not changed
    assert np.array_equal(segmenter.lesion_probability(image, SPACING, [a])[1], once)
    lesion = clicks.LesionClicks((a,)).with_click((a[0], a[1], a[2] - 5), True)
    fresh = clicknet.ClickSegmenter()
    clicks.hybrid_lesion(segmenter, image, SPACING, clicks.LesionClicks((a,)))
    before = counting.calls
    corrected = clicks.hybrid_lesion(segmenter, image, SPACING, lesion)
    assert counting.calls == before + 1  # only the view of both clicks; the one-click view was kept
    expected = clicks.hybrid_lesion(fresh, image, SPACING, lesion)
    assert np.array_equal(corrected[0].mask, expected[0].mask) and np.array_equal(corrected[1], expected[1])
    changed = image.copy()
    changed[a] += 50.0
    segmenter.lesion_probability(changed, SPACING, [a])
    assert counting.calls == before + 2


def test_a_correction_grows_the_first_click_once_and_other_settings_grow_it_again(monkeypatch):
    """``clicks.grown_lesion``: the ray grower's lesion is kept by its crop, click, spacing and
    settings, so a corrective click does not grow the first click again; the lesion is the same."""
    import dataclasses

    from LiverTumorRefineLib.coarse import seeded

    image, first, _, a = two_lesions(gap_mm=20.0)
    segmenter = clicks.shipped_segmenter()
    grown = []
    real = seeded.seed_labels
    monkeypatch.setattr(seeded, "seed_labels", lambda *args, **kw: grown.append(args[1]) or real(*args, **kw))
    clicks.GROWN.clear()
    one = clicks.LesionClicks((a,))
    plain = clicks.hybrid_lesion(segmenter, image, SPACING, one)[0]
    corrected = clicks.hybrid_lesion(segmenter, image, SPACING, one.with_click((a[0], a[1], a[2] - 5), True))[0]
    assert len(grown) == 1 and corrected.mask.sum() >= plain.mask.sum()
    clicks.GROWN.clear()
    assert np.array_equal(clicks.hybrid_lesion(segmenter, image, SPACING, one)[0].mask, plain.mask)  # the same afresh
    assert len(grown) == 2
    monkeypatch.setattr(seeded, "DEFAULT", dataclasses.replace(seeded.DEFAULT, rim_min_hu=0.0))
    clicks.hybrid_lesion(segmenter, image, SPACING, one)
    assert len(grown) == 3  # other settings: grown again
    kept = clicks.grown_lesion(image[:, :, :40], (12, 32, 24), SPACING)
    assert not kept.flags.writeable
    clicks.GROWN.clear()


def test_the_shipped_click_model_runs_from_its_pinned_export_with_the_models_probabilities(tmp_path):
    """``clicknet_default.onnx`` is pinned, made from the shipped .pt (the CLI rebuilds it byte for
    byte), and the default segmenter runs it; a model given in memory runs in PyTorch, and both
    give the same lesion probability."""
    from LiverTumorRefineLib.refine import runtime as rt

    shipped_pt = weights.default_weights_path(clicknet.DEFAULT_MODEL)
    export = rt.onnx_path_for(shipped_pt)
    assert export.name in rt.SHIPPED_ONNX_SHA256 and rt.export_matches(export, shipped_pt)
    rt.main([str(shipped_pt), "--click", "--out", str(tmp_path / "again.onnx")])
    assert weights.sha256_of(tmp_path / "again.onnx") == rt.SHIPPED_ONNX_SHA256[export.name]
    shipped = clicknet.ClickSegmenter()
    assert isinstance(shipped.runtime, rt.OnnxRuntime) and shipped.runtime.path == export
    in_memory = clicknet.ClickSegmenter(clicknet.load_click_model())
    assert isinstance(in_memory.runtime, rt.TorchRuntime)
    image, first, _, a = two_lesions(gap_mm=20.0)
    box, onnx = shipped.lesion_probability(image, SPACING, [a])
    same_box, torch_prob = in_memory.lesion_probability(image, SPACING, [a])
    assert box == same_box and onnx.max() > 0.5  # it sees the lesion
    assert np.abs(onnx - torch_prob).max() < 1e-4


def test_api_clicks_share_one_refiner_that_keeps_its_boxes(monkeypatch):
    """``api.click_lesion`` loads the shipped refiner once per process and keeps its refined boxes
    (``clicks.shipped_refiner``): an undo back to click 1 refines nothing and gives click 1's lesion."""
    from LiverTumorRefineLib import api
    from LiverTumorRefineLib.coarse.points import voxel_to_ras
    from LiverTumorRefineLib.refine.refiner import Refiner

    image, _, _, a = two_lesions(gap_mm=20.0)
    ct = Volume(image, Geometry(spacing=SPACING[::-1]))
    seed, beside = voxel_to_ras(a, ct), voxel_to_ras((a[0], a[1], a[2] + 12), ct)
    refiner = clicks.shipped_refiner()
    assert clicks.shipped_refiner() is refiner and refiner.boxes is not None
    refined_boxes = []
    real = Refiner._refine_box
    monkeypatch.setattr(Refiner, "_refine_box", lambda self, *args: refined_boxes.append(1) or real(self, *args))
    first = api.click_lesion(ct, positive=[seed])
    assert refined_boxes  # click 1 was refined
    api.click_lesion(ct, positive=[seed], negative=[beside])
    before = len(refined_boxes)
    undone = api.click_lesion(ct, positive=[seed])
    assert len(refined_boxes) == before  # the undo found click 1's boxes kept
    assert undone["box"] == first["box"] and np.array_equal(undone["refined"], first["refined"])
    assert np.array_equal(undone["coarse"], first["coarse"])
