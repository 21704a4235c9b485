"""Coarse masks from one click per lesion: the grower, seed files and coordinates, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import dice
from LiverTumorRefineLib.coarse.points import parse_seeds, ras_to_voxels, read_markups
from LiverTumorRefineLib.coarse.seeded import SeedConfig, nearest_seed_labels, seed_labels
from LiverTumorRefineLib.volume.geometry import Geometry, Volume
from LiverTumorRefineLib.refine.weights import save_model

SPACING = (2.5, 0.8, 0.8)


def liver_with_lesions(centres_mm, radii_mm, delta_hu, shape=(40, 128, 128), noise=15.0, seed=0):
    """Liver-like tissue (100 HU) with spherical lesions ``delta_hu`` away and Gaussian noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32) * np.array(SPACING, np.float32)[:, None, None, None]
    truth = np.zeros(shape, np.int16)
    image = np.full(shape, 100.0, np.float32)
    for i, (centre, radius) in enumerate(zip(centres_mm, radii_mm), start=1):
        inside = ((grid - np.array(centre, np.float32)[:, None, None, None]) ** 2).sum(0) <= radius**2
        truth[inside] = i
        image[inside] += delta_hu
    return image + rng.normal(0, noise, shape).astype(np.float32), truth


def voxel(centre_mm):
    return tuple(int(round(c / s)) for c, s in zip(centre_mm, SPACING))


@pytest.mark.parametrize("delta", [-40.0, 35.0])  # hypodense and hyperdense
def test_one_click_finds_a_faint_lesion(delta):
    image, truth = liver_with_lesions([(50, 50, 52)], [12.0], delta, noise=20.0)
    before = image.copy()
    labels = seed_labels(image, [voxel((50, 50, 52))], SPACING)
    assert np.array_equal(image, before)  # input untouched
    assert dice(labels == 1, truth == 1) > 0.85


def test_neighbouring_lesions_are_never_merged():
    centres = [(50, 45, 40), (50, 45, 64)]  # 24 mm apart, 10 mm radii: a 4 mm gap
    image, truth = liver_with_lesions(centres, [10.0, 10.0], -45.0)
    seeds = [voxel(c) for c in centres]
    labels = seed_labels(image, seeds, SPACING)
    cells = nearest_seed_labels(image.shape, seeds, SPACING)
    for i in (1, 2):
        assert dice(labels == i, truth == i) > 0.8
        assert np.all(cells[labels == i] == i)  # nothing claimed across the midline


def test_a_lesion_at_the_liver_edge_does_not_leak_into_fat():
    image, truth = liver_with_lesions([(50, 50, 50)], [12.0], -50.0)
    image[:, :, 64:] = -100.0 + np.random.default_rng(1).normal(0, 15, image[:, :, 64:].shape)  # fat beyond x = 51 mm
    truth[:, :, 64:] = 0
    labels = seed_labels(image, [voxel((50, 50, 45))], SPACING)
    assert not labels[:, :, 66:].any()
    assert dice(labels == 1, truth == 1) > 0.75


def rim_lesion(rim_hu: float):
    """A 14 mm lesion whose inner 8 mm is a necrotic core (-55 HU from the liver) and whose outer
    6 mm is a rim ``rim_hu`` from the liver (the reference includes the rim)."""
    image, truth = liver_with_lesions([(50, 50, 52)], [14.0], 0.0, noise=12.0)
    grid = np.indices(image.shape).astype(np.float32) * np.array(SPACING, np.float32)[:, None, None, None]
    core = ((grid - np.array([50, 50, 52], np.float32)[:, None, None, None]) ** 2).sum(0) <= 8.0 ** 2
    image[(truth == 1) & ~core] += rim_hu
    image[core] -= 55.0
    return image, truth == 1, core


def test_a_necrotic_core_with_an_enhancing_rim_grows_to_the_rim():
    image, truth, core = rim_lesion(40.0)
    seed = [voxel((50, 50, 52))]
    with_rim = seed_labels(image, seed, SPACING) == 1
    core_only = seed_labels(image, seed, SPACING, SeedConfig(rim_min_hu=0)) == 1
    assert dice(core_only, core) > 0.8  # without the rim rule the strongest edge is the core's
    assert dice(with_rim, truth) > 0.85
    assert dice(with_rim, truth) > dice(core_only, truth) + 0.3


@pytest.mark.parametrize("delta", [-40.0, 35.0])
def test_a_lesion_without_a_rim_is_unchanged_by_the_rim_rule(delta):
    image, truth = liver_with_lesions([(50, 50, 52)], [12.0], delta, noise=20.0)
    seed = [voxel((50, 50, 52))]
    assert np.array_equal(seed_labels(image, seed, SPACING), seed_labels(image, seed, SPACING, SeedConfig(rim_min_hu=0)))


def test_seed_outside_the_image_is_named():
    image, _ = liver_with_lesions([(50, 50, 50)], [10.0], -40.0)
    with pytest.raises(RefineError, match="Seed 2 .* outside the CT"):
        seed_labels(image, [voxel((50, 50, 50)), (3, 500, 20)], SPACING)


GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(90.0, 25.0, 400.0),
                    direction=tuple(sitk.VersorTransform((0.1, 0.2, 0.9), 0.3).GetMatrix()))


def test_ras_seeds_map_to_the_voxel_they_were_placed_on():
    volume = Volume(np.zeros((40, 128, 128), np.float32), GEOMETRY)
    index = (12, 70, 33)  # z, y, x
    lps = io.to_sitk(volume).TransformIndexToPhysicalPoint((index[2], index[1], index[0]))
    ras = (-lps[0], -lps[1], lps[2])
    assert np.allclose(ras_to_voxels([ras], volume)[0], index, atol=1e-6)
    with pytest.raises(RefineError, match="Seed 1 at RAS .* outside the CT"):
        ras_to_voxels([(ras[0] + 500, ras[1], ras[2])], volume)


def test_seed_strings_and_markups_files(tmp_path):
    assert parse_seeds("1,2,3; -4.5,5,6e1") == [(1.0, 2.0, 3.0), (-4.5, 5.0, 60.0)]
    with pytest.raises(RefineError, match="Seed 2 .* not R,A,S"):
        parse_seeds("1,2,3;4,5")
    for system, stored in (("LPS", [-10.0, -20.0, 30.0]), ("RAS", [10.0, 20.0, 30.0])):
        path = tmp_path / f"{system}.mrk.json"
        path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": system,
                                                 "controlPoints": [{"position": stored}]}]}))
        assert read_markups(path) == [(10.0, 20.0, 30.0)]
        assert parse_seeds(str(path)) == [(10.0, 20.0, 30.0)]
    (tmp_path / "empty.mrk.json").write_text(json.dumps({"markups": [{"controlPoints": []}]}))
    with pytest.raises(RefineError, match="holds no points"):
        read_markups(tmp_path / "empty.mrk.json")
    (tmp_path / "bad.mrk.json").write_text("not json")
    with pytest.raises(RefineError, match="not a Slicer markups file"):
        parse_seeds(str(tmp_path / "bad.mrk.json"))


def test_cli_refines_from_negative_ras_seeds(tmp_path, trained_model):
    centre = (50, 50, 52)
    image, truth = liver_with_lesions([centre], [12.0], -45.0)
    ct, weights = tmp_path / "ct.nii.gz", tmp_path / "model.pt"
    io.write_volume(Volume(image, GEOMETRY), ct)
    save_model(trained_model, weights)
    z, y, x = voxel(centre)
    lps = io.to_sitk(Volume(image, GEOMETRY)).TransformIndexToPhysicalPoint((x, y, z))
    seeds = f"{-lps[0]:.3f},{-lps[1]:.3f},{lps[2]:.3f}"
    assert seeds.startswith("-")  # R < 0: the value must not be taken for an option
    proc = subprocess.run([sys.executable, "-m", "LiverTumorRefineLib.cli", "refine", "--image", str(ct), "--seeds",
                           seeds, "--out", str(tmp_path / "refined.nii.gz"), "--coarse-out", str(tmp_path / "coarse.nii.gz"),
                           "--weights", str(weights), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "coarse" in proc.stdout
    for name in ("coarse", "refined"):
        out = io.read_volume(tmp_path / f"{name}.nii.gz")
        assert out.geometry.same_grid(GEOMETRY)
        assert dice(out.array > 0, truth == 1) > 0.8


def test_cli_coarse_source_errors(tmp_path):
    image, _ = liver_with_lesions([(50, 50, 52)], [12.0], -45.0)
    ct = tmp_path / "ct.nii.gz"
    io.write_volume(Volume(image, GEOMETRY), ct)
    base = [sys.executable, "-m", "LiverTumorRefineLib.cli", "refine", "--image", str(ct), "--out", str(tmp_path / "o.nii.gz")]
    for extra, message in ((["--seeds", "1,2"], "not R,A,S"), (["--seeds", "900,900,900"], "outside the CT"),
                           (["--mask", str(ct), "--seeds", "1,2,3"], "not allowed with"),
                           (["--seeds", "1,2,3", "--label", "2"], "--label selects a label of --mask")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def _star_mask_everywhere(shape, seed, spacing_zyx, directions, radii_mm) -> np.ndarray:
    """``star_mask`` as it was: the three nearest rays of every voxel of the grid."""
    import torch

    axes = [(np.arange(n, dtype=np.float32) - c) * s for n, c, s in zip(shape, seed, spacing_zyx)]
    offsets = torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3))
    distance = offsets.norm(dim=1)
    unit = offsets / distance.clamp_min(1e-6)[:, None]
    nearest = (unit @ torch.from_numpy(directions.T.astype(np.float32))).topk(3, dim=1)
    weights = torch.softmax(nearest.values * 50.0, dim=1)
    radius = (torch.from_numpy(radii_mm.astype(np.float32))[nearest.indices] * weights).sum(dim=1)
    return (distance <= radius).reshape(tuple(shape)).numpy()


@pytest.mark.parametrize("case", range(6))
def test_the_star_mask_looks_up_rays_only_between_the_smallest_and_largest_radius_and_is_unchanged(case):
    """Only voxels between the spheres of the smallest and largest ray radius need their nearest
    rays; the mask is voxel for voxel the one every voxel's lookup gives (a zero radius included)."""
    from LiverTumorRefineLib.coarse.seeded import ray_directions, star_mask

    rng = np.random.default_rng(case)
    spacing = (float(rng.choice([1.0, 2.5, 5.0])), float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.6, 1.0)))
    shape = tuple(int(2 * np.ceil(22 / s) + 1) for s in spacing)
    seed = [n // 2 + int(rng.integers(-2, 3)) for n in shape]
    directions = ray_directions()
    radii = rng.uniform(rng.uniform(0, 6), rng.uniform(8, 22), len(directions))
    if case % 3 == 0:
        radii[int(rng.integers(len(directions)))] = 0.0
    expected = _star_mask_everywhere(shape, seed, spacing, directions, radii)
    got = star_mask(shape, seed, spacing, directions, radii)
    assert 0 < got.sum() < got.size and np.array_equal(got, expected)
