"""Training the coarse liver-and-tumour network (``autoseg``) on whole axial slices.

Cases come from the same data specs as refinement training (``trainset.parse_spec``: phantom
recipes or LiTS / MSD / phantom folders). Each case is resampled in-plane exactly as the
Segmenter does it, a number of slices is kept (half of them through tumour when the case has
any), and the network learns 0/1/2 labels on random crops under intensity augmentation.
Deterministic for a given seed on the CPU.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from LiverTumorRefineLib.coarse.autoseg import SegConfig, Segmenter, build_segnet, context_stack, labels_in_plane, network_plane, plane_size, \
    save_segnet
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import overlap_metrics
from LiverTumorRefineLib.training.phantom import Case
from LiverTumorRefineLib.device import resolve_device
from LiverTumorRefineLib.training.train import lr_at, plain_config

Log = Callable[[str], None]


@dataclass
class SegTrainConfig:
    """Hyper-parameters of a coarse-network training run (stored in the model's metadata)."""

    steps: int = 3000
    batch_size: int = 8
    crop_px: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    slices_per_case: int = 24
    seed: int = 0
    seg: SegConfig = field(default_factory=SegConfig)


Slice = tuple[torch.Tensor, torch.Tensor]  # input (C, Y, X) float16, labels (Y, X) uint8


def case_slices(case: Case, cfg: SegTrainConfig, rng: np.random.Generator, multiple: int) -> list[Slice]:
    """Training slices of one case: up to ``slices_per_case``, half through tumour, the rest
    through liver or, for a tenth, anywhere (so the network sees slices without liver)."""
    spacing = case.image.spacing_zyx
    label = case.label.array
    size = plane_size(label.shape, spacing, cfg.seg.pixel_mm, multiple)
    tumour = np.flatnonzero((label == 2).any(axis=(1, 2)))
    liver = np.flatnonzero((label == 1).any(axis=(1, 2)))
    n = cfg.slices_per_case
    picks = list(rng.choice(tumour, min(len(tumour), n // 2), replace=False)) if len(tumour) else []
    if len(liver):
        picks += list(rng.choice(liver, min(len(liver), n - len(picks) - n // 10), replace=False))
    picks += list(rng.choice(label.shape[0], min(label.shape[0], n - len(picks)), replace=False))
    picks = sorted(set(int(k) for k in picks))
    plane = network_plane(case.image.array, size, cfg.seg.hu_window)
    x = context_stack(plane, picks, float(spacing[0]), cfg.seg.context_mm).half()
    y = labels_in_plane(label[picks], size)
    return [(x[i], y[i]) for i in range(len(picks))]


def slice_bank(cases: Iterable[Case], cfg: SegTrainConfig, multiple: int, log: Log = print) -> tuple[list[Slice], list[str]]:
    """All training slices in memory (cases are consumed one at a time) and the case names."""
    rng = np.random.default_rng(cfg.seed)
    bank: list[Slice] = []
    names = []
    for case in cases:
        bank += case_slices(case, cfg, rng, multiple)
        names.append(case.name)
    if not bank:
        raise RefineError("No training slices: the data spec gave no cases.")
    log(f"slice bank: {len(bank)} slices from {len(names)} cases")
    return bank, names


def random_crop(x: torch.Tensor, y: torch.Tensor, crop: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``crop``-square crop (padded with air and background where the slice is smaller); half
    of the time centred near a tumour or liver pixel so small lesions are seen often."""
    pad_y, pad_x = max(0, crop - x.shape[1]), max(0, crop - x.shape[2])
    if pad_y or pad_x:
        x = F.pad(x.float(), (0, pad_x, 0, pad_y), value=-1.0).half()
        y = F.pad(y, (0, pad_x, 0, pad_y), value=0)
    h, w = y.shape
    target = (y == 2).nonzero() if (y == 2).any() else (y == 1).nonzero()
    if len(target) and torch.rand(1, generator=generator).item() < 0.5:
        cy, cx = target[int(torch.randint(len(target), (1,), generator=generator))].tolist()
        jitter = torch.randint(-crop // 3, crop // 3 + 1, (2,), generator=generator).tolist()
        top, left = cy + jitter[0] - crop // 2, cx + jitter[1] - crop // 2
    else:
        top = int(torch.randint(h - crop + 1, (1,), generator=generator))
        left = int(torch.randint(w - crop + 1, (1,), generator=generator))
    top, left = min(max(top, 0), h - crop), min(max(left, 0), w - crop)
    return x[:, top:top + crop, left:left + crop], y[top:top + crop, left:left + crop]


def jitter_intensity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample contrast (+-10%), brightness (+-25 HU) and noise, as scanners and phases differ."""
    n = x.shape[0]
    scale = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    noise = 0.05 * torch.rand(n, 1, 1, 1, generator=generator) * torch.randn(x.shape, generator=generator)
    return x * scale + shift + noise


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice of liver and tumour (tumour pixels are rare)."""
    ce = F.cross_entropy(logits, target.long())
    prob = torch.softmax(logits, dim=1)
    dice = 0.0
    for c in (1, 2):
        truth = (target == c).float()
        dice = dice + 1 - (2 * (prob[:, c] * truth).sum() + 1) / (prob[:, c].sum() + truth.sum() + 1)
    return ce + dice / 2


def evaluate_segmentation(labels: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """Liver Dice (liver + tumour as the organ) and tumour Dice of a 0/1/2 prediction."""
    liver = overlap_metrics(truth > 0, labels > 0)["dice"]
    tumour = overlap_metrics(truth == 2, labels == 2)["dice"] if (truth == 2).any() else float("nan")
    return {"liver_dice": float(liver), "tumour_dice": float(tumour)}


def train_segnet(cfg: SegTrainConfig, cases: Iterable[Case], val_cases: Sequence[Case], out_dir: str | os.PathLike,
                 device: str = "auto", log: Log = print, progress: Callable[[float, str], object] | None = None) -> Path:
    """Train the coarse network and write ``out_dir/segnet.pt`` (+ ``.sha256``); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = build_segnet(cfg.seg).to(dev)
    multiple = 2 ** model.net_config.depth  # type: ignore[attr-defined]
    if cfg.crop_px % multiple:
        raise RefineError(f"--crop must be a multiple of {multiple} (got {cfg.crop_px}).")
    bank, names = slice_bank(cases, cfg, multiple, log)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    t0, running = time.perf_counter(), 0.0
    for step in range(cfg.steps):
        pick = torch.randint(len(bank), (cfg.batch_size,), generator=generator).tolist()
        crops = [random_crop(*bank[i], cfg.crop_px, generator) for i in pick]
        x = jitter_intensity(torch.stack([c[0] for c in crops]).float(), generator).to(dev)
        y = torch.stack([c[1] for c in crops]).to(dev)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = seg_loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if progress is not None:
            progress((step + 1) / cfg.steps, f"step {step + 1} loss {running:.3f}")
    log(f"trained {cfg.steps} steps in {time.perf_counter() - t0:.0f} s, final loss {running:.3f}")
    model.eval()
    scores = []
    segmenter = Segmenter(model, device=str(dev))
    for case in val_cases:
        row = evaluate_segmentation(segmenter.segment(case.image.array, case.image.spacing_zyx),
                                    case.label.array, case.image.spacing_zyx)
        scores.append({"case": case.name, **row})
        log(f"validation {case.name}: liver Dice {row['liver_dice']:.3f}, tumour Dice {row['tumour_dice']:.3f}")
    path = out / "segnet.pt"
    meta = {"train_config": plain_config(asdict(cfg)), "train_cases": names, "validation": scores}
    digest = save_segnet(model.cpu(), path, meta)
    log(f"wrote {path} (sha256 {digest})")
    return path

