"""Which lesion each positive click belongs to (``coarse.grouping``), through the worker's job and
in ``.mrk.json`` files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ball_mask
from LiverTumorRefineLib.coarse import grouping
from LiverTumorRefineLib.coarse.points import parse_signed_seeds
from LiverTumorRefineLib.errors import RefineError

SPACING = (2.5, 1.0, 1.0)


def ball(shape, centre, radius):
    return ball_mask(shape, centre, radius, SPACING)


@pytest.mark.parametrize("text, number", [("lesion 2", 2), ("Lesion-12", 12), (" LESION_3 ", 3), ("lesion2", 2),
                                          ("lesion 0", None), ("lesion", None), ("neg", None), ("", None),
                                          (None, None), ("my lesion 2", None)])
def test_lesion_numbers_read_from_descriptions(text, number):
    assert grouping.lesion_number(text) == number
    if number is not None:
        assert grouping.lesion_number(grouping.lesion_label(number)) == number


def test_without_a_previous_result_every_unnumbered_point_is_a_lesion():
    points = [(5, 20, 20), (5, 22, 20), (5, 60, 60)]
    assert grouping.assign_lesions(points, [None, None, None], None, SPACING) == [1, 2, 3]
    assert grouping.assign_lesions(points, [2, None, 2], None, SPACING) == [2, 3, 2]  # numbers kept, new ones after


def test_a_point_next_to_a_lesion_joins_it_and_a_far_one_is_new():
    shape = (12, 100, 100)
    first = ball(shape, (6, 30, 30), 8.0)
    second = ball(shape, (6, 70, 70), 6.0)
    previous = first | second
    points = [(6, 30, 30), (6, 70, 70),  # the two lesions' first clicks, numbered by the last run
              (6, 30, 41),  # 3 mm outside the first lesion: a missed part of it
              (6, 70, 79),  # inside reach of the second
              (6, 30, 70 + 6 + 20)]  # 20 mm from everything: a new lesion
    numbers = grouping.assign_lesions(points, [1, 2, None, None, None], previous, SPACING)
    assert numbers == [1, 2, 1, 2, 3]
    # reach 0: only points inside a piece join it
    assert grouping.assign_lesions(points, [1, 2, None, None, None], previous, SPACING, reach_mm=0.0) == [1, 2, 3, 4, 5]
    # a point inside a piece that no numbered point names starts a lesion that later points join
    unnamed = grouping.assign_lesions([(6, 70, 70), (6, 70, 79)], [None, None], previous, SPACING)
    assert unnamed == [1, 1]


def test_pieces_are_found_on_the_masks_bounding_box():
    shape = (12, 100, 100)
    mask = ball(shape, (6, 50, 50), 5.0)
    pieces = grouping.Pieces(mask, SPACING)
    assert pieces.labels.shape == tuple(s.stop - s.start for s in pieces.box) and pieces.labels.max() == 1
    assert pieces.nearest((6, 50, 50), 5.0) == (1, 0.0)
    piece, distance = pieces.nearest((6, 50, 58), 10.0)  # 3 mm beyond the 5 mm radius
    assert piece == 1 and 2.5 <= distance <= 3.5
    assert pieces.nearest((6, 50, 58), 2.0) == (0, float("inf"))
    assert pieces.nearest((0, 0, 0), 5.0) == (0, float("inf"))  # far outside the box


def test_grouped_keeps_the_order_of_first_points():
    points = [(1.0, 0, 0), (2.0, 0, 0), (3.0, 0, 0), (4.0, 0, 0)]
    assert grouping.grouped(points, [2, 1, 2, 3]) == [[(1.0, 0, 0), (3.0, 0, 0)], [(2.0, 0, 0)], [(4.0, 0, 0)]]


def markups(tmp_path, controls):
    path = tmp_path / "clicks.mrk.json"
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
        {"label": f"F-{i}", "position": list(p), "description": d} for i, (p, d) in enumerate(controls)]}]}))
    return str(path)


def test_a_markups_file_groups_points_by_their_lesion_numbers(tmp_path):
    path = markups(tmp_path, [((1, 2, 3), "lesion 1"), ((40, 2, 3), ""), ((2, 2, 3), "lesion 1"),
                              ((5, 5, 5), "negative"), ((60, 2, 3), "lesion 3")])
    positive, negative = parse_signed_seeds(path)
    assert positive == [[(1.0, 2.0, 3.0), (2.0, 2.0, 3.0)], (40.0, 2.0, 3.0), (60.0, 2.0, 3.0)]
    assert negative == [(5.0, 5.0, 5.0)]


def test_the_worker_groups_a_click_update_and_reports_the_numbers(tmp_path):
    from LiverTumorRefineLib import worker
    from LiverTumorRefineLib.coarse.points import voxel_to_ras
    from LiverTumorRefineLib.volume.geometry import Geometry, Volume

    shape = (12, 100, 100)
    ct = Volume(np.zeros(shape, np.int16), Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    previous = ball(shape, (6, 30, 30), 8.0)
    seeds = [voxel_to_ras(v, ct) for v in [(6, 30, 30), (6, 30, 41), (6, 80, 80)]]
    worker.save_mask(tmp_path / "previous.npz", previous)
    coarse = {"seed_lesions": [1, None, None], "previous": "previous.npz"}
    lesions, numbers = worker.group_seeds(ct, seeds, coarse, tmp_path)
    assert numbers == [1, 1, 2]
    assert lesions == [[tuple(seeds[0]), tuple(seeds[1])], [tuple(seeds[2])]]
    # without the previous result the unnumbered points are lesions of their own
    assert worker.group_seeds(ct, seeds, {"seed_lesions": [1, None, None]}, tmp_path)[1] == [1, 2, 3]
    with pytest.raises(RefineError, match="seed lesion numbers do not match"):
        worker.group_seeds(ct, seeds, {"seed_lesions": [1, None]}, tmp_path)


def test_from_seeds_hands_a_lesions_points_to_the_click_methods_together(monkeypatch):
    from LiverTumorRefineLib.coarse import clicks, sources
    from LiverTumorRefineLib.coarse.points import voxel_to_ras
    from LiverTumorRefineLib.volume.geometry import Geometry, Volume

    ct = Volume(np.zeros((12, 40, 40), np.int16), Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    a, b, c = (voxel_to_ras(v, ct) for v in [(6, 10, 10), (6, 12, 10), (6, 30, 30)])
    seen = {}

    def fake(image, spacing, positive, negative, method):
        seen.update(positive=positive, method=method)
        return clicks.ClickedLesions([], [], [], method)

    monkeypatch.setattr(clicks, "lesions_from_clicks", fake)
    sources.from_seeds(ct, [[a, b], c], method="hybrid")
    assert [len(lesion) for lesion in seen["positive"]] == [2, 1] and seen["method"] == "hybrid"
    assert np.allclose(seen["positive"][0], [(6, 10, 10), (6, 12, 10)])
    sources.from_seeds(ct, [a, b, c], method="hybrid")  # flat: a lesion per point
    assert [len(lesion) for lesion in seen["positive"]] == [1, 1, 1]
    with pytest.raises(RefineError, match=r"Seed 1 \(\[\]\) is not a point"):
        sources.from_seeds(ct, [[], c], method="hybrid")


def test_numbered_keeps_given_numbers_and_numbers_the_rest_after_them():
    assert grouping.numbered([None, 3, None, 1]) == [4, 3, 5, 1]
    assert grouping.numbered([None, None]) == [1, 2]
    assert grouping.numbered([]) == []
