"""The click network: one lesion's probability from a CT crop around its clicks.

It is 2.5D, so it trains on a CPU in minutes: the crop is the axial slices within ``reach_mm`` of the
first positive click, each resampled to ``crop_px`` pixels of ``pixel_mm`` centred on the click; its
channels are the CT at ``context_mm`` z offsets (liver-normalised as the refiner sees it) and, per
sign, two maps of the 3D distance to the nearest click: a Gaussian (where the click is) and a linear
ramp that is still far from zero ``reach_mm`` away (so a slice far from every click still tells where
the clicks are). The slices' predictions are stacked, pasted back on the CT's grid, and the 3D
component connected to the positive clicks is the lesion (``ClickSegmenter.segment``).

The model file (configs bounded, SHA-256 checked), the crop geometry, the network's input and the
segmenter live here; ``clicks`` turns lesions' clicks into masks and applies corrections.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from LiverTumorRefineLib.config import LIVER_REFERENCE_HU, NetConfig, known_fields
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, report
from LiverTumorRefineLib.refine import runtime as runtimes
from LiverTumorRefineLib.refine import sampling, weights
from LiverTumorRefineLib.refine.result_cache import ResultCache, digest
from LiverTumorRefineLib.refine.network import BRNet

FORMAT = "livertumorrefine-clicknet/1"
DEFAULT_MODEL = "clicknet_default.pt"
MAP_CHANNELS = 4  # positive Gaussian, positive ramp, negative Gaussian, negative ramp
# Soft tissue closer than this to a positive click is left out of the parenchyma estimate: it is
# most likely the lesion itself.
PARENCHYMA_EXCLUDE_MM = 15.0
SEEN_BYTES = 32 * 2 ** 20  # model outputs kept per ClickSegmenter (ClickSegmenter.seen): a few hundred crops

Voxel = tuple[float, float, float]


@dataclass(frozen=True)
class ClickConfig:
    """The crop a click model sees (millimetres, so behaviour does not depend on spacing)."""

    crop_px: int = 64
    pixel_mm: float = 1.25  # 64 px x 1.25 mm: 80 mm across, the seeded grower's 40 mm radius
    reach_mm: float = 40.0  # slices this far above and below the first click are predicted
    context_mm: tuple[float, ...] = (-3.0, 0.0, 3.0)  # z offsets of the image channels
    hu_window: tuple[float, float] = (-150.0, 250.0)
    sigma_mm: float = 5.0  # Gaussian click map
    ramp_mm: float = 60.0  # linear click map: 1 at the click, 0 at this distance
    threshold: float = 0.5

    @property
    def image_channels(self) -> int:
        return len(self.context_mm)

    @property
    def in_channels(self) -> int:
        return self.image_channels + MAP_CHANNELS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClickConfig":
        return cls(**known_fields(cls, data))


# Bounds of a click model file's config, checked before anything is built (see weights.check_fields).
CLICK_BOUNDS: dict[str, tuple[Any, ...]] = {
    "crop_px": ("int", 16, 256), "pixel_mm": ("number", 0.1, 10), "reach_mm": ("number", 1, 200),
    "context_mm": ("offsets", 9, 20), "hu_window": ("window", -2000, 4000), "sigma_mm": ("number", 0.5, 50),
    "ramp_mm": ("number", 1, 500), "threshold": ("number", 0.01, 0.99),
}
# Small enough to train in half an hour on one shared CPU core (about 1 s per step of 24 slices).
NET = NetConfig(base_channels=12, depth=3, path_blocks=(1, 1, 1), mask_prior=False)


def build_click_model(cfg: ClickConfig = ClickConfig(), net: NetConfig = NET) -> BRNet:
    """A fresh click network: a BRNet with the image channels and click maps as input."""
    if cfg.crop_px % 2 ** net.depth:
        raise ValueError(f"crop_px {cfg.crop_px} must be divisible by {2 ** net.depth}")
    model = BRNet(cfg.in_channels, net, mask_prior=False)
    model.click_config = cfg  # type: ignore[attr-defined]  # travels with the module
    model.net_config = net  # type: ignore[attr-defined]
    return model


def save_click_model(model: BRNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """Write a click model atomically with its configs and a ``.sha256`` sidecar; returns the hash."""
    return weights.save_network(model, path, FORMAT, {"click_config": model.click_config.to_dict(),  # type: ignore[attr-defined]
                                                      "net_config": model.net_config.to_dict()}, meta)  # type: ignore[attr-defined]


def load_click_model(path: str | os.PathLike | None = None) -> BRNet:
    """The click model in ``path`` (default: the shipped one) after its SHA-256 check, loaded with
    ``weights_only=True`` and its configs bounded before building; RefineError on any problem."""
    path = Path(path) if path is not None else weights.default_weights_path(DEFAULT_MODEL)
    payload = weights.load_payload(path, FORMAT, "LiverTumorRefine click model")
    if not isinstance(payload.get("state_dict"), dict):
        raise RefineError(f"Model weights {path} are malformed: they hold no network weights (state_dict). "
                          "Use a model file written by this version's click training.")
    click = weights.check_fields(path, "click_config", payload.get("click_config"), CLICK_BOUNDS)
    net = weights.check_fields(path, "net_config", payload.get("net_config"), weights.NET_BOUNDS)
    try:
        cfg, net_cfg = ClickConfig.from_dict(click), NetConfig.from_dict(net)
        model = build_click_model(cfg, net_cfg)
    except (TypeError, ValueError) as exc:
        raise RefineError(f"Model weights {path} are malformed ({exc}). Use a model file written by this version's "
                          "click training.") from None
    return weights.with_state(model, payload, path)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ crop geometry
@dataclass(frozen=True)
class CropGrid:
    """Where a click crop lies on the CT: the predicted slices ``z0:z1`` and the voxel
    coordinates (y, x) of its pixel centres, around the voxel ``centre``."""

    centre: tuple[int, int, int]
    z0: int
    z1: int
    y: np.ndarray
    x: np.ndarray

    def offsets_mm(self, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Millimetres from the centre of each slice (z) and pixel row (y) and column (x)."""
        sz, sy, sx = spacing_zyx
        return ((np.arange(self.z0, self.z1) - self.centre[0]) * sz, (self.y - self.centre[1]) * sy,
                (self.x - self.centre[2]) * sx)

    def box(self, shape: Sequence[int]) -> tuple[slice, slice, slice]:
        """The CT voxels the crop covers."""
        return (slice(self.z0, self.z1),
                slice(max(int(math.floor(self.y[0])), 0), min(int(math.ceil(self.y[-1])) + 1, shape[1])),
                slice(max(int(math.floor(self.x[0])), 0), min(int(math.ceil(self.x[-1])) + 1, shape[2])))


def crop_grid(centre_zyx: Sequence[float], shape: Sequence[int], spacing_zyx: Sequence[float],
              cfg: ClickConfig) -> CropGrid:
    """The crop around ``centre_zyx`` (voxels; rounded to the nearest voxel)."""
    centre = tuple(int(round(float(v))) for v in centre_zyx)
    reach = int(math.floor(cfg.reach_mm / spacing_zyx[0]))
    pixel = (np.arange(cfg.crop_px) + 0.5 - cfg.crop_px / 2) * cfg.pixel_mm
    return CropGrid(centre, max(centre[0] - reach, 0), min(centre[0] + reach + 1, shape[0]),  # type: ignore[arg-type]
                    centre[1] + pixel / spacing_zyx[1], centre[2] + pixel / spacing_zyx[2])


def click_grids(positive_zyx: Sequence[Voxel], shape: Sequence[int], spacing_zyx: Sequence[float],
                cfg: ClickConfig) -> list[CropGrid]:
    """The crops a lesion's clicks need: the first positive click's, then one around each further
    positive click that no earlier crop holds (a correction far out on a large lesion)."""
    grids = [crop_grid(positive_zyx[0], shape, spacing_zyx, cfg)]
    for point in positive_zyx[1:]:
        if all(in_box(point, g.box(shape)) is None for g in grids):
            grids.append(crop_grid(point, shape, spacing_zyx, cfg))
    return grids


def union_box(boxes: Sequence[Sequence[slice]]) -> tuple[slice, slice, slice]:
    """The smallest box holding every one of ``boxes``."""
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))  # type: ignore[return-value]


def resample_slices(image: np.ndarray, z: np.ndarray, grid: CropGrid) -> torch.Tensor:
    """Slices ``z`` of ``image`` (HU) bilinearly resampled onto the crop's pixels, edges
    replicated: (len(z), P, P) float32."""
    box = grid.box(image.shape)
    # cropped before the slices are picked: picking first copies whole 512x512 slices
    block = torch.from_numpy(np.ascontiguousarray(image[:, box[1], box[2]][z], dtype=np.float32))
    gy = torch.from_numpy((2 * (grid.y - box[1].start) + 1) / block.shape[1] - 1).float()
    gx = torch.from_numpy((2 * (grid.x - box[2].start) + 1) / block.shape[2] - 1).float()
    g = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (P, P, 2): x then y, rows are y
    g = g.expand(len(z), *g.shape)
    return F.grid_sample(block[:, None], g, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def crop_image(image: np.ndarray, spacing_zyx: Sequence[float], grid: CropGrid, cfg: ClickConfig) -> torch.Tensor:
    """The crop's image channels in HU: (Z, K, P, P), each slice at the ``context_mm`` z offsets
    (linear between slices, the CT's first and last slices replicated)."""
    offsets = np.asarray(cfg.context_mm, dtype=np.float64) / spacing_zyx[0]
    position = np.clip(np.arange(grid.z0, grid.z1)[:, None] + offsets[None], 0, image.shape[0] - 1)  # (Z, K)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, image.shape[0] - 1)
    needed = np.unique(np.concatenate([low.ravel(), high.ravel()]))
    slices = resample_slices(image, needed, grid)
    index = {int(z): i for i, z in enumerate(needed)}
    weight = torch.from_numpy(position - low).float()[..., None, None]
    lo = slices[[index[int(v)] for v in low.ravel()]].view(*low.shape, *slices.shape[1:])
    hi = slices[[index[int(v)] for v in high.ravel()]].view(*high.shape, *slices.shape[1:])
    return sampling.clean_hu(lo * (1 - weight) + hi * weight, cfg.hu_window)


def click_maps(z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray, positive_mm: Sequence[Voxel],
               negative_mm: Sequence[Voxel], cfg: ClickConfig) -> torch.Tensor:
    """(Z, 4, P, P) click maps on a crop whose slices, rows and columns lie at ``z_mm``, ``y_mm``,
    ``x_mm`` (millimetres in any common frame; clicks as (z, y, x) mm in the same frame): per sign
    (positive first) a Gaussian of the 3D distance to the nearest click, then a linear ramp."""
    z, y, x = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (z_mm, y_mm, x_mm))
    maps = []
    for clicks in (positive_mm, negative_mm):
        d2 = torch.full((len(z), len(y), len(x)), float("inf"))
        for cz, cy, cx in clicks:
            d2 = torch.minimum(d2, ((z - cz) ** 2)[:, None, None] + ((y - cy) ** 2)[None, :, None]
                               + ((x - cx) ** 2)[None, None, :])
        maps.append(torch.exp(-d2 / (2 * cfg.sigma_mm ** 2)))
        maps.append((1 - d2.sqrt() / cfg.ramp_mm).clamp(min=0))
    return torch.stack(maps, dim=1)


def crop_parenchyma(hu: torch.Tensor, z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray,
                    positive_mm: Sequence[Voxel]) -> float | None:
    """The liver parenchyma's HU in a crop (``hu`` (Z, P, P), its centre image channel): the most
    common soft-tissue value (``sampling.parenchyma_from``) away from the positive clicks."""
    near = click_maps(z_mm, y_mm, x_mm, positive_mm, [], ClickConfig(ramp_mm=PARENCHYMA_EXCLUDE_MM))[:, 1] > 0
    return sampling.parenchyma_from(hu[~near])


def network_input(image_hu: torch.Tensor, maps: torch.Tensor, cfg: ClickConfig) -> torch.Tensor:
    """Image channels (HU, already normalised) windowed to [-1, 1], then the click maps."""
    low, high = cfg.hu_window
    image = (image_hu.clamp(low, high) - (low + high) / 2) / ((high - low) / 2)
    return torch.cat([image, maps], dim=1)


def normalise_crop(image_hu: torch.Tensor, z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray,
                   positive_mm: Sequence[Voxel], cfg: ClickConfig) -> torch.Tensor:
    """The crop shifted so the parenchyma reads ``LIVER_REFERENCE_HU`` (unchanged when unknown)."""
    centre = image_hu[:, cfg.image_channels // 2]
    liver = crop_parenchyma(centre, z_mm, y_mm, x_mm, positive_mm)
    return image_hu if liver is None else image_hu + (LIVER_REFERENCE_HU - liver)


# ------------------------------------------------------------------------------------------ the model
@dataclass
class LesionMask:
    """One lesion's mask on the CT voxels ``box`` (a crop of the CT)."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray

    def paste(self, shape: Sequence[int]) -> np.ndarray:
        """The lesion on a whole-CT bool array of ``shape``."""
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.box] = self.mask
        return out


def in_box(voxel: Sequence[float], box: Sequence[slice]) -> tuple[int, int, int] | None:
    """``voxel`` rounded, relative to ``box``, or None when it lies outside."""
    local = tuple(int(round(float(v))) - b.start for v, b in zip(voxel, box))
    return local if all(0 <= v < b.stop - b.start for v, b in zip(local, box)) else None  # type: ignore[return-value]


def keep_clicked(mask: np.ndarray, positive: Sequence[tuple[int, int, int]],
                 negative: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """The 26-connected components of ``mask`` that hold a positive click (local voxels); every
    positive click is in the result and no negative click is."""
    mask = mask.copy()
    for v in negative:
        mask[v] = False
    for v in positive:
        mask[v] = True
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.unique([labels[v] for v in positive])
    return np.isin(labels, keep[keep > 0])


class ClickSegmenter:
    """The click model, loaded once; ``segment`` gives one lesion's mask from its clicks.

    ``weights_path``: None (the shipped model), a model file, or a network from ``build_click_model``
    (whose weights must not change while this segmenter is used: its outputs are kept, ``seen``);
    ``device``: "cpu", "cuda" or "auto"; ``runtime``: what runs the network, as for the Refiner
    (``runtime.select_runtime``; "auto": ONNX Runtime on the CPU where an export of the model file
    is present, else PyTorch)."""

    def __init__(self, weights_path: str | os.PathLike | BRNet | None = None, device: str = "cpu",
                 runtime: str = "auto") -> None:
        if isinstance(weights_path, torch.nn.Module):
            model, path = weights_path, None  # built in memory: it has no export
        else:
            path = Path(weights_path) if weights_path is not None else weights.default_weights_path(DEFAULT_MODEL)
            model = load_click_model(path)
        self.device = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cfg: ClickConfig = model.click_config  # type: ignore[attr-defined]
        # ONNX Runtime where its export of this model file is present (Resources/Models ships one),
        # else PyTorch: on 2 shared CPU cores a click's crop took 60-70% of the bare module's time
        # (bench/click_runtime.py)
        self.runtime = runtimes.select_runtime(runtime, model.eval(), self.device, path)
        # the model's outputs by a digest of their inputs: a corrective click asks again for the
        # first click's view (the hybrid's first-click addition), which then costs no network run
        self.seen = ResultCache(SEEN_BYTES)

    def probabilities(self, image: np.ndarray, spacing_zyx: Sequence[float], positive_zyx: Sequence[Voxel],
                      negative_zyx: Sequence[Voxel] = (), grid: CropGrid | None = None) -> tuple[CropGrid, torch.Tensor]:
        """A crop (default: around the first positive click) and the lesion probability of its
        pixels (Z, P, P), the model seeing every click."""
        cfg = self.cfg
        grid = grid if grid is not None else crop_grid(positive_zyx[0], image.shape, spacing_zyx, cfg)
        z_mm, y_mm, x_mm = grid.offsets_mm(spacing_zyx)
        pos, neg = ([tuple((float(v) - c) * s for v, c, s in zip(p, grid.centre, spacing_zyx)) for p in points]
                    for points in (positive_zyx, negative_zyx))
        hu = normalise_crop(crop_image(image, spacing_zyx, grid, cfg), z_mm, y_mm, x_mm, pos, cfg)
        x = network_input(hu, click_maps(z_mm, y_mm, x_mm, pos, neg, cfg), cfg)
        key = digest(x.detach().cpu().numpy())  # the whole network input: the same one gives the same output
        prob = self.seen.get(key)
        if prob is None:
            with torch.inference_mode():
                prob = torch.sigmoid(self.runtime(x).float()).cpu()
            self.seen.put(key, prob, prob.numel() * prob.element_size())
        return grid, prob.clone()

    def lesion_probability(self, image: np.ndarray, spacing_zyx: Sequence[float], positive_zyx: Sequence[Voxel],
                           negative_zyx: Sequence[Voxel] = (), box: Sequence[slice] | None = None
                           ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """The lesion probability on the CT voxels of ``box`` (default: the box of the crops the
        clicks need, ``click_grids``), from each of those crops, the larger where they overlap."""
        grids = click_grids(positive_zyx, image.shape, spacing_zyx, self.cfg)
        box = tuple(box) if box is not None else union_box([g.box(image.shape) for g in grids])
        out = np.zeros(tuple(b.stop - b.start for b in box), dtype=np.float32)
        for grid in grids:
            _, prob = self.probabilities(image, spacing_zyx, positive_zyx, negative_zyx, grid)
            on_box = paste_back(prob, grid, box, spacing_zyx, self.cfg)
            z = slice(grid.z0 - box[0].start, grid.z1 - box[0].start)
            np.maximum(out[z], on_box, out=out[z])
        return box, out  # type: ignore[return-value]

    def segment(self, image: np.ndarray, spacing_zyx: Sequence[float], positive_zyx: Sequence[Voxel],
                negative_zyx: Sequence[Voxel] = (), progress: Progress | None = None) -> LesionMask:
        """One lesion's mask from its clicks (voxel indices z, y, x of ``image``, in HU): the crop
        is centred on the first positive click, with more crops for positive clicks beyond it; the
        result is the 3D component connected to the positive clicks, which it always holds (and
        never a negative click)."""
        if len(positive_zyx) == 0:
            raise RefineError("A lesion needs at least one positive click inside it.")
        report(progress, 0.0, "Click model")
        box, prob = self.lesion_probability(image, spacing_zyx, positive_zyx, negative_zyx)
        native = prob > self.cfg.threshold
        local = [v for v in (in_box(p, box) for p in positive_zyx) if v is not None]
        negative = [v for v in (in_box(p, box) for p in negative_zyx) if v is not None]
        report(progress, 1.0, "Click model")
        return LesionMask(box, keep_clicked(native, local, negative))


def paste_back(prob: torch.Tensor, grid: CropGrid, box: Sequence[slice], spacing_zyx: Sequence[float],
               cfg: ClickConfig) -> np.ndarray:
    """The crop's probabilities (Z, P, P) bilinearly on the rows and columns of ``box`` (0 outside
    the crop), for the crop's own slices."""
    p = cfg.crop_px
    y = np.arange(box[1].start, box[1].stop)
    x = np.arange(box[2].start, box[2].stop)
    u = (y - grid.centre[1]) * spacing_zyx[1] / cfg.pixel_mm + p / 2 - 0.5  # pixel coordinates
    v = (x - grid.centre[2]) * spacing_zyx[2] / cfg.pixel_mm + p / 2 - 0.5
    gy = torch.from_numpy((2 * u + 1) / p - 1).float()
    gx = torch.from_numpy((2 * v + 1) / p - 1).float()
    g = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    g = g.expand(prob.shape[0], *g.shape)
    out = F.grid_sample(prob[:, None], g, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    return out.numpy()
