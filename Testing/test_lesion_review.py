"""Lesion-by-lesion review in the Slicer scene (issue 13) on a headless MRML scene (slicer-core).

The bodies are in ``slicer_testing`` (the in-Slicer self-test runs them too): synthetic ellipsoid
lesions with known axes give the expected rows; decisions change exactly one lesion's voxels, go
through the scene's undo and survive saving and loading the scene; jumping centres the views.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the PyPI slicer-core package")

from LiverTumorRefineLib.scene import lesions  # noqa: E402
from LiverTumorRefineLib.scene import logic as ltr  # noqa: E402
import slicer_testing as st  # noqa: E402


@pytest.fixture
def app():
    return st.make_app()


@pytest.fixture
def review_logic():
    return ltr.LiverTumorRefineLogic()  # the review needs no model


def test_rows_match_ellipsoids_with_known_axes(app, review_logic):
    st.check_lesion_table(app.scene, review_logic, st.build_review_case(app.scene))


def test_decisions_change_exactly_that_lesion_and_undo(app, review_logic):
    rc = st.build_review_case(app.scene)
    table, numbers = st.check_lesion_table(app.scene, review_logic, rc)
    st.check_lesion_decisions(app.scene, review_logic, rc, table, numbers)


def test_jump_centres_and_zooms_on_the_lesion(app, review_logic):
    rc = st.build_review_case(app.scene)
    table, numbers = st.check_lesion_table(app.scene, review_logic, rc)
    st.check_jump_to_lesion(app.scene, review_logic, rc, table, numbers)


def test_decisions_are_saved_with_the_scene(app, review_logic, tmp_path):
    rc = st.build_review_case(app.scene)
    table, numbers = st.check_lesion_table(app.scene, review_logic, rc)
    st.check_review_saved_with_scene(app.scene, app.app, review_logic, rc, table, numbers, str(tmp_path / "bundle"))


def test_a_new_review_replaces_the_old_one(app, review_logic):
    rc = st.build_review_case(app.scene)
    first, numbers = st.check_lesion_table(app.scene, review_logic, rc)
    review_logic.review.setDecision(first, numbers["A"], lesions.REJECTED)
    nodes = app.scene.GetNumberOfNodes()
    second = review_logic.review.createReview(rc.volumeNode, rc.segmentationNode, rc.refinedId, rc.coarse, rc.refined)
    assert second is first and app.scene.GetNumberOfNodes() == nodes, "a second review added nodes"
    assert review_logic.review.decisions(second) == {} and not review_logic.review.canUndo(second)
    assert all(row["coarse_dice"] is None for row in review_logic.review.lesions(second)), "no truth, no Dice"


def test_no_lesion_gives_an_empty_table(app, review_logic):
    rc = st.build_review_case(app.scene)
    empty = np.zeros_like(rc.coarse)
    table = review_logic.review.createReview(rc.volumeNode, rc.segmentationNode, rc.refinedId, empty, empty)
    assert review_logic.review.lesions(table) == [] and table.GetTable().GetNumberOfRows() == 0
