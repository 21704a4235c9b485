"""``volume.io.file_bytes`` and ``check_complete``: the gzip check that runs before SimpleITK reads a
NIfTI (SimpleITK reads a cut-short file's missing voxels as zeros). Large zlib blocks instead of the
gzip module, so that the check releases the GIL; it must refuse and accept what gzip does."""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import pytest

from LiverTumorRefineLib.volume import io
from LiverTumorRefineLib.volume.geometry import Geometry, Volume


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few hundred bytes, so that every boundary case is crossed many times."""
    monkeypatch.setattr(io, "GZIP_BLOCK", 97)
    monkeypatch.setattr(io, "OUT_BLOCK", 301)


def test_file_bytes_is_what_gzip_reads(tmp_path, small_blocks):
    payload = os.urandom(3000) + bytes(20000) + b"liver" * 500
    path = tmp_path / "two.gz"
    # two members, zero padding after the first (gzip accepts both)
    path.write_bytes(gzip.compress(payload[:7000]) + bytes(5) + gzip.compress(payload[7000:]))
    assert b"".join(io.file_bytes(path, compressed=True)) == gzip.decompress(path.read_bytes()) == payload
    plain = tmp_path / "plain.bin"
    plain.write_bytes(payload)
    assert b"".join(io.file_bytes(plain, compressed=False)) == payload


@pytest.mark.parametrize("damage, error", [
    (lambda data: data[:len(data) // 2], EOFError),  # cut short
    (lambda data: data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:], zlib.error),  # CRC-32 of the trailer
    (lambda data: b"not gzip" + data, zlib.error),
])
def test_file_bytes_refuses_what_gzip_refuses(tmp_path, small_blocks, damage, error):
    path = tmp_path / "bad.gz"
    path.write_bytes(damage(gzip.compress(os.urandom(5000))))
    with pytest.raises((OSError, EOFError, zlib.error)):
        gzip.decompress(path.read_bytes())
    with pytest.raises(error):
        b"".join(io.file_bytes(path, compressed=True))


def test_check_complete_counts_nan_voxels_across_blocks(tmp_path, small_blocks):
    array = np.random.default_rng(0).normal(60, 20, (5, 17, 19)).astype(np.float32)
    array.flat[::7] = np.nan
    path = tmp_path / "ct.nii.gz"
    io.write_volume(Volume(array, Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))), path)
    assert io.check_complete(path) == (int(np.isnan(array).sum()), array.size)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(Exception, match="damaged"):
        io.check_complete(cut)


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32])
@pytest.mark.parametrize("low, high", [(0, 2), (-3, 4), (0, 300), (5, 6)])
def test_distinct_values_are_those_of_numpy_unique(dtype, low, high):
    from LiverTumorRefineLib.volume.labels import distinct_values

    rng = np.random.default_rng(low + high)
    array = rng.random((5, 7, 9)) < 0.5 if dtype is bool else rng.integers(low, high, (5, 7, 9)).astype(dtype)
    for view in (array, array[:, ::2, 1:], array[:0]):
        assert distinct_values(view) == set(np.unique(view).tolist())


def _merge_reference(labels, refined, label):
    """merge_label as first written: a copy of the map, the label's lost voxels filled, then set."""
    out = labels.copy()
    fill = 1 if label == 2 and set(np.unique(labels).tolist()) <= {0, 1, 2} else 0
    out[(labels == label) & ~refined] = fill
    out[refined] = label
    return out


@pytest.mark.parametrize("values, label", [((0, 1), 1), ((0, 255), 255), ((0, 1, 2), 2), ((0, 1, 2), 1),
                                           ((0, 2, 5), 2), ((0, 3), 3)])
def test_merge_label_keeps_the_masks_form(values, label):
    from LiverTumorRefineLib.volume.labels import merge_label

    rng = np.random.default_rng(len(values) + label)
    labels = rng.choice(np.array(values, dtype=np.uint8), (4, 9, 11))
    refined = rng.random(labels.shape) < 0.3
    merged = merge_label(labels, refined, label)
    assert merged.dtype == labels.dtype
    assert np.array_equal(merged, _merge_reference(labels, refined, label))


@pytest.mark.parametrize("dtype, values, label", [(np.uint8, (0, 1), None), (np.int8, (0, 1), 1), (bool, (0, 1), None),
                                                  (np.uint8, (0, 255), None), (np.int16, (0, 1), None), (np.uint8, (0, 1, 2), None)])
def test_select_label_without_copy_is_the_same_mask_and_read_only(dtype, values, label):
    """``copy=False`` may hand out a view of the input (the pipeline's peak memory), but it must
    be the same mask, and a view must not let anyone write into the caller's labels."""
    from LiverTumorRefineLib.volume.labels import select_label

    labels = np.random.default_rng(3).choice(np.array(values), (3, 7, 5)).astype(dtype)
    before = labels.copy()
    copied, used = select_label(labels, label)
    viewed, used_too = select_label(labels, label, copy=False)
    assert used == used_too and viewed.dtype == bool and np.array_equal(copied, viewed)
    if np.shares_memory(viewed, labels):
        assert not viewed.flags.writeable
        with pytest.raises(ValueError):
            viewed[0, 0, 0] = True
    assert np.shares_memory(viewed, labels) == (values == (0, 1) and np.dtype(dtype).itemsize == 1)
    assert np.array_equal(labels, before)


@pytest.mark.parametrize("values, label", [((0, 1), 1), ((0, 1), None), ((0, 255), 255), ((0, 1, 2), 2)])
def test_merge_label_reusing_the_refined_mask_gives_the_same_map(values, label):
    from LiverTumorRefineLib.volume.labels import merge_label

    rng = np.random.default_rng(11)
    labels = rng.choice(np.array(values, dtype=np.uint8), (4, 6, 5))
    refined = rng.random(labels.shape) < 0.4
    expected = merge_label(labels, refined.copy(), label)
    assert np.array_equal(merge_label(labels, refined, label, reuse=True), expected)
