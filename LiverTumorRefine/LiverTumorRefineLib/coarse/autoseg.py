"""Automatic coarse segmentation: a small 2.5D network for liver and tumour on whole CT volumes.

Every axial slice is resampled in-plane to ``SegConfig.pixel_mm`` and stacked with slices a few
millimetres above and below (interpolated, so behaviour does not depend on slice spacing); a
BRNet-style encoder-decoder (feature paths instead of skips, see ``network``) with three
outputs (background, liver, tumour) labels it. Slices are processed in slabs so memory stays
bounded, the probabilities are brought back to the CT grid and the liver is cleaned to its
largest connected piece with the tumours inside it. The output is a coarse LiTS-style label map
(0/1/2) for the Refiner, not a final answer.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from LiverTumorRefineLib.config import NetConfig, known_fields
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.refine.network import BRNet
from LiverTumorRefineLib.refine.runtime import TorchRuntime
from LiverTumorRefineLib.device import resolve_device
from LiverTumorRefineLib.progress import Progress, report
from LiverTumorRefineLib.refine.weights import NET_BOUNDS, check_fields, default_weights_path, load_payload, save_network, with_state

FORMAT = "livertumorrefine-segnet/1"
DEFAULT_SEG_MODEL = "segnet_default.pt"
SEG_NET = NetConfig(base_channels=16, depth=4, path_blocks=(1, 1, 1, 1), mask_prior=False)
N_CLASSES = 3  # background, liver, tumour
# Sane bounds of a coarse model file's SegConfig (see ``weights.check_fields``).
SEG_BOUNDS: dict[str, tuple[Any, ...]] = {
    "pixel_mm": ("number", 0.25, 10), "context_mm": ("offsets", 15, 40), "hu_window": ("window", -2000, 4000),
    "min_tumour_ml": ("number", 0, 1000),
}


@dataclass(frozen=True)
class SegConfig:
    """How CT slices are presented to the coarse network (stored in its model file)."""

    pixel_mm: float = 2.0  # in-plane resampling
    context_mm: tuple[float, ...] = (-8.0, -4.0, 0.0, 4.0, 8.0)  # z offsets of the input channels
    hu_window: tuple[float, float] = (-200.0, 300.0)
    min_tumour_ml: float = 0.05  # smaller predicted tumour pieces are dropped as noise

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegConfig":
        return cls(**known_fields(cls, data))


def build_segnet(cfg: SegConfig = SegConfig(), net: NetConfig = SEG_NET) -> BRNet:
    """A fresh coarse network for ``cfg``'s input channels."""
    model = BRNet(len(cfg.context_mm), net, mask_prior=False, out_channels=N_CLASSES)
    model.seg_config = cfg  # type: ignore[attr-defined]
    model.net_config = net  # type: ignore[attr-defined]
    return model


def save_segnet(model: BRNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """Write the coarse network atomically with a ``.sha256`` sidecar; returns the hash."""
    return save_network(model, path, FORMAT, {"seg_config": model.seg_config.to_dict(),  # type: ignore[attr-defined]
                                              "net_config": model.net_config.to_dict()}, meta)  # type: ignore[attr-defined]


def load_segnet(path: str | os.PathLike | None = None) -> BRNet:
    """The coarse network from ``path`` (default: the shipped one), hash-checked."""
    path = Path(path) if path is not None else default_weights_path(DEFAULT_SEG_MODEL)
    payload = load_payload(path, FORMAT, "LiverTumorRefine coarse segmentation model")
    if not isinstance(payload.get("state_dict"), dict):
        raise RefineError(f"Model weights {path} are malformed: they hold no network weights (state_dict).")
    seg = check_fields(path, "seg_config", payload.get("seg_config"), SEG_BOUNDS)
    net = check_fields(path, "net_config", payload.get("net_config"), NET_BOUNDS)
    try:
        seg_config, net_config = SegConfig.from_dict(seg), NetConfig.from_dict(net)
    except (TypeError, ValueError) as exc:
        raise RefineError(f"Model weights {path} are malformed ({exc}).") from None
    if len(net_config.path_blocks) != net_config.depth:
        raise RefineError(f"Model weights {path} are malformed: {len(net_config.path_blocks)} path_blocks for depth "
                          f"{net_config.depth}.")
    return with_state(build_segnet(seg_config, net_config), payload, path)  # type: ignore[return-value]  # type: ignore[return-value]


def plane_size(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], pixel_mm: float, multiple: int) -> tuple[int, int]:
    """In-plane size at ``pixel_mm``, rounded up to a multiple the network can halve ``depth`` times."""
    return tuple(max(multiple, int(np.ceil(n * s / pixel_mm / multiple)) * multiple)  # type: ignore[return-value]
                 for n, s in zip(shape_zyx[1:], spacing_zyx[1:]))


def resample_plane(slices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(Z, Y, X) slices resized in-plane to ``size`` (antialiased bilinear)."""
    return F.interpolate(slices[:, None].float(), size=size, mode="bilinear", align_corners=False,
                         antialias=True)[:, 0]


def normalise(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """HU clipped to ``window`` and scaled to [-1, 1]; NaN counts as the window's low end."""
    low, high = window
    hu = torch.nan_to_num(hu.float(), nan=low, posinf=high, neginf=low)
    return (hu.clamp(low, high) - (low + high) / 2) / ((high - low) / 2)


def context_stack(plane: torch.Tensor, indices: Sequence[int], slice_mm: float, context_mm: Sequence[float]) -> torch.Tensor:
    """Network input (N, C, Y, X) for slices ``indices`` of ``plane`` (Z, Y, X): channel c is
    the volume ``context_mm[c]`` away in z, linearly interpolated, clamped at the ends."""
    n = plane.shape[0]
    channels = []
    for offset in context_mm:
        z = torch.tensor(indices, dtype=torch.float32) + offset / slice_mm
        z = z.clamp(0, n - 1)
        lo = z.floor().long()
        hi = (lo + 1).clamp(max=n - 1)
        w = (z - lo.float())[:, None, None]
        channels.append(plane[lo] * (1 - w) + plane[hi] * w)
    return torch.stack(channels, dim=1)


def network_plane(image: np.ndarray, size: tuple[int, int], window: tuple[float, float], slab: int = 16) -> torch.Tensor:
    """A (Z, Y, X) CT in HU at network resolution (``size`` in-plane), normalised: what inference
    and training both feed the network. Converted ``slab`` slices at a time so that a float32
    copy of a large CT is never made."""
    plane = torch.empty((image.shape[0], *size), dtype=torch.float32)
    for start in range(0, image.shape[0], slab):
        chunk = torch.from_numpy(np.ascontiguousarray(image[start:start + slab], dtype=np.float32))
        plane[start:start + len(chunk)] = normalise(resample_plane(chunk, size), window)
    return plane


def labels_in_plane(label: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A (Z, Y, X) 0/1/2 label map resized in-plane to ``size`` (nearest)."""
    return F.interpolate(torch.from_numpy(label.astype(np.uint8))[:, None].float(), size=size,
                         mode="nearest")[:, 0].to(torch.uint8)


class Segmenter:
    """Whole-volume coarse liver and tumour labels from the coarse network."""

    def __init__(self, weights: str | os.PathLike | BRNet | None = None, device: str = "auto", slab: int = 16) -> None:
        self.device = resolve_device(device)
        model = weights if isinstance(weights, torch.nn.Module) else load_segnet(weights)
        self.model: BRNet = model.to(self.device).eval()
        # the Refiner's PyTorch runtime: channels_last on the CPU, fp16 autocast on CUDA
        self.runtime = TorchRuntime(self.model, self.device)
        self.cfg: SegConfig = model.seg_config  # type: ignore[attr-defined]
        self.multiple = 2 ** model.net_config.depth  # type: ignore[attr-defined]
        self.slab = max(1, slab)

    def segment(self, image: np.ndarray, spacing_zyx: Sequence[float], progress: Progress | None = None) -> np.ndarray:
        """0/1/2 labels (uint8) on ``image``'s grid for a (Z, Y, X) CT in HU."""
        if image.ndim != 3:
            raise RefineError(f"The CT must be a 3D volume (got {image.ndim}D).")
        size = plane_size(image.shape, spacing_zyx, self.cfg.pixel_mm, self.multiple)
        report(progress, 0.0, "Preparing slices for the coarse network")
        with torch.inference_mode():
            plane = network_plane(image, size, self.cfg.hu_window, self.slab)
            out = np.empty(image.shape, dtype=np.uint8)
            n = image.shape[0]
            for start in range(0, n, self.slab):
                index = list(range(start, min(start + self.slab, n)))
                x = context_stack(plane, index, float(spacing_zyx[0]), self.cfg.context_mm).to(self.device)
                prob = torch.softmax(self.runtime(x).float(), dim=1)
                prob = F.interpolate(prob, size=image.shape[1:], mode="bilinear", align_corners=False)
                out[start:start + len(index)] = prob.argmax(dim=1).to(torch.uint8).cpu().numpy()
                done = min(start + self.slab, n)
                report(progress, 0.05 + 0.85 * done / n, f"Segmenting liver and tumours: slice {done}/{n}")
        report(progress, 0.9, "Cleaning up the coarse labels")
        labels = clean_labels(out, spacing_zyx, self.cfg.min_tumour_ml)
        report(progress, 1.0, "Coarse labels done")
        return labels


def clean_labels(labels: np.ndarray, spacing_zyx: Sequence[float], min_tumour_ml: float) -> np.ndarray:
    """Keep the largest connected liver (liver + tumour) and the tumour pieces inside it that
    are at least ``min_tumour_ml``; everything else becomes background."""
    organ = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(organ, True), sortByObjectSize=True)
    liver = sitk.GetArrayFromImage(components) == 1
    out = np.where(liver, np.uint8(1), np.uint8(0))
    tumour = sitk.GetImageFromArray(((labels == 2) & liver).astype(np.uint8))
    min_voxels = int(np.ceil(min_tumour_ml * 1000.0 / float(np.prod(spacing_zyx))))
    pieces = sitk.RelabelComponent(sitk.ConnectedComponent(tumour, True), minimumObjectSize=max(min_voxels, 1))
    out[sitk.GetArrayFromImage(pieces) > 0] = 2
    return out
