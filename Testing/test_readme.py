"""README's Python examples run as written.

Every ```python block of README.md is executed, in order, in a folder holding ``ct.nii.gz``,
``coarse.nii.gz`` and ``truth.nii.gz`` (what ``livertumorrefine demo`` writes), here made from a
small generated phantom so the test needs no download. No path is substituted. A block preceded
by the line ``<!-- readme-test: skip (REASON) -->`` is not run (for blocks that need a download;
there are none today).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.training.coarse_simulator import simulate_coarse
from LiverTumorRefineLib.training.phantom import make_phantom
from LiverTumorRefineLib.volume.geometry import Volume

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<marker><!-- readme-test: skip \((?P<reason>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks(text: str) -> list[tuple[str, str | None]]:
    """(code, skip reason or None) of every ```python block."""
    return [(m["code"], m["reason"]) for m in BLOCK.finditer(text)]


def demo_like_folder(folder: Path) -> None:
    """ct.nii.gz, truth.nii.gz and coarse.nii.gz of a small phantom, named as the demo names them."""
    case = make_phantom(1000, size_xy=64, n_slices=16, n_tumours=1)
    io.write_volume(case.image, folder / "ct.nii.gz")
    io.write_volume(case.label, folder / "truth.nii.gz")
    truth = case.label.array == 2
    coarse = simulate_coarse(truth, case.image.spacing_zyx, np.random.default_rng(0), image=case.image.array)
    io.write_volume(Volume(coarse.astype(np.uint8), case.image.geometry), folder / "coarse.nii.gz")


def test_readme_has_python_examples_and_every_skip_gives_a_reason():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README has no ```python block"
    assert all(reason is None or reason.strip() for _, reason in blocks)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    demo_like_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, (code, reason) in enumerate(python_blocks(README.read_text(encoding="utf-8")), start=1):
        if reason is not None:
            continue
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)  # noqa: S102 - our own README
        except Exception as exc:  # noqa: BLE001 - report which block failed, with its error
            pytest.fail(f"README python block {number} fails: {type(exc).__name__}: {exc}")
    assert (tmp_path / "refined.nii.gz").is_file() and (tmp_path / "refined_seeded.nii.gz").is_file()
