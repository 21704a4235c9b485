"""Training the click model on realistic phantoms with simulated clicks.

Each phantom lesion gives one crop, cut and normalised by the same code as inference
(``clicknet.crop_image``, ``clicknet.normalise_crop``), centred on the first click: a point near the
lesion's deepest point. Its target is that lesion alone (a neighbouring lesion is background).
Corrective clicks follow a user: the deepest point of the largest error region, positive on a
missed part and negative on a leak. Before the network can predict, the errors are those of
simulated predictions (the lesion's core only, a shrunk or grown outline, a merge with a
neighbour, a blob beside it); at ``refresh_at`` of the run they are replaced by half by the
network's own errors (click 1, then click 2). Training samples are single slices of a crop with
the clicks of a random prefix of a scenario.

    python -m LiverTumorRefineLib.training.clicktrain --out runs/clicks --minutes 30
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from LiverTumorRefineLib.coarse import clicks
from LiverTumorRefineLib.coarse import clicknet
from LiverTumorRefineLib.coarse.clicknet import ClickConfig
from LiverTumorRefineLib.config import NetConfig
from LiverTumorRefineLib.device import DEVICES, resolve_device
from LiverTumorRefineLib.evaluate.metrics import dice
from LiverTumorRefineLib.refine.boxes import component_labels
from LiverTumorRefineLib.training.augment import augment
from LiverTumorRefineLib.training.phantom import Case, make_phantom
from LiverTumorRefineLib.training.train import lr_at, patch_loss, plain_config
from LiverTumorRefineLib.training.trainset import DEFAULT_PHANTOM_SEED, VALIDATION_PHANTOM_SEED
from LiverTumorRefineLib.volume.atomic import atomic_path

Log = Callable[[str], None]
TUMOUR = 2
HU_SHIFT = 15.0  # the parenchyma estimate's error (as the refiner's training with normalisation)
Click = tuple[float, float, float, bool]  # (z, y, x) mm from the crop centre, positive?


@dataclass
class ClickTrainConfig:
    """Hyper-parameters of a click training run (stored in the model's metadata)."""

    steps: int = 6000  # upper bound; ``minutes`` may end the run sooner (the schedule is fitted to it)
    minutes: float = 30.0  # wall-time budget of the optimisation steps
    batch_size: int = 24
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 150
    epoch_steps: int = 300  # validation and checkpoint interval
    seed: int = 0
    phantoms: int = 60
    first_phantom: int = DEFAULT_PHANTOM_SEED
    val_phantoms: int = 6
    min_diameter_mm: float = 5.0
    margin_mm: float = 15.0  # slices kept beyond the lesion's top and bottom
    lesion_slices: float = 0.85  # share of samples drawn from slices the lesion is on
    first_only: float = 0.35  # share of samples with the first click alone
    refresh_at: tuple[float, ...] = (0.45,)
    click: ClickConfig = field(default_factory=ClickConfig)
    net: NetConfig = field(default_factory=lambda: clicknet.NET)


@dataclass
class LesionCrop:
    """One lesion's crop on the model's pixel grid: image channels (Z, K, P, P) float16 HU,
    normalised; the lesion and other lesions (Z, P, P) bool; slice positions (mm from the first
    click, which is the crop centre); click scenarios."""

    name: str
    image: torch.Tensor
    truth: np.ndarray
    other: np.ndarray
    z_mm: np.ndarray
    slice_mm: float
    scenarios: list[list[Click]] = field(default_factory=list)
    own: list[list[Click]] = field(default_factory=list)  # from the network's own errors

    def spacing(self, cfg: ClickConfig) -> tuple[float, float, float]:
        return (self.slice_mm, cfg.pixel_mm, cfg.pixel_mm)

    def pixel_mm(self, cfg: ClickConfig) -> np.ndarray:
        return (np.arange(cfg.crop_px) + 0.5 - cfg.crop_px / 2) * cfg.pixel_mm

    def to_mm(self, voxel: Sequence[int], cfg: ClickConfig) -> tuple[float, float, float]:
        pixel = self.pixel_mm(cfg)
        return (float(self.z_mm[voxel[0]]), float(pixel[voxel[1]]), float(pixel[voxel[2]]))


def first_click(lesion: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator | None) -> tuple[int, int, int]:
    """A voxel near the lesion's centre: its deepest point (``rng`` None), or a random voxel at
    least half as deep (deepest with a 40% chance)."""
    where = np.argwhere(lesion)
    sub = tuple(slice(max(int(a) - 1, 0), int(b) + 2) for a, b in zip(where.min(axis=0), where.max(axis=0)))
    depth = ndimage.distance_transform_edt(lesion[sub], sampling=spacing_zyx)
    if rng is None or rng.random() < 0.4:
        at = np.unravel_index(int(np.argmax(depth)), depth.shape)
    else:
        candidates = np.argwhere(depth >= 0.5 * depth.max())
        at = tuple(candidates[rng.integers(len(candidates))])
    return tuple(int(a + s.start) for a, s in zip(at, sub))  # type: ignore[return-value]


def lesion_crops(case: Case, cfg: ClickTrainConfig, rng: np.random.Generator | None) -> list[LesionCrop]:
    """A crop per tumour of ``case`` at least ``cfg.min_diameter_mm`` across (equivalent sphere),
    centred on its first click (``first_click``; the deepest point when ``rng`` is None)."""
    image, spacing = case.image.array, case.image.spacing_zyx
    tumours = case.label.array == TUMOUR
    labels = component_labels(tumours)
    voxel_ml = float(np.prod(spacing))
    out = []
    for k in range(1, int(labels.max()) + 1):
        lesion = labels == k
        if 2 * (lesion.sum() * voxel_ml * 3 / (4 * math.pi)) ** (1 / 3) < cfg.min_diameter_mm:
            continue
        click = first_click(lesion, spacing, rng)
        grid = clicknet.crop_grid(click, image.shape, spacing, cfg.click)
        z_mm, y_mm, x_mm = grid.offsets_mm(spacing)
        hu = clicknet.normalise_crop(clicknet.crop_image(image, spacing, grid, cfg.click), z_mm, y_mm, x_mm,
                                     [(0.0, 0.0, 0.0)], cfg.click)
        zs = np.flatnonzero(lesion.any(axis=(1, 2)))
        margin = int(round(cfg.margin_mm / spacing[0]))
        keep = np.arange(max(zs[0] - margin, grid.z0), min(zs[-1] + margin + 1, grid.z1))
        z = keep - grid.z0
        truth = clicknet.resample_slices(lesion.astype(np.float32), keep, grid) > 0.5
        other = clicknet.resample_slices((tumours & ~lesion).astype(np.float32), keep, grid) > 0.5
        out.append(LesionCrop(f"{case.name}/{k}", hu[z].half(), truth.numpy(), other.numpy(), z_mm[z].astype(np.float32),
                              float(spacing[0])))
    return out


# ------------------------------------------------------------------------------- simulated predictions
def simulated_prediction(crop: LesionCrop, cfg: ClickConfig, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong answer for the crop's lesion: its core only, a shrunk or grown outline,
    a merge with a neighbouring lesion, or a blob beside it."""
    truth, spacing = crop.truth, crop.spacing(cfg)
    kind = rng.choice(["core", "shrunk", "grown", "merge", "blob"])
    if kind == "merge" and crop.other.any():
        near = ndimage.distance_transform_edt(~truth, sampling=spacing) < rng.uniform(5, 25)
        touching, _ = ndimage.label(crop.other, structure=np.ones((3, 3, 3), bool))
        ids = np.unique(touching[near & crop.other])
        if ids[ids > 0].size:
            return truth | np.isin(touching, ids[ids > 0])
    if kind == "core":
        z, y, x = np.meshgrid(crop.z_mm, crop.pixel_mm(cfg), crop.pixel_mm(cfg), indexing="ij")
        distance = np.sqrt(z ** 2 + y ** 2 + x ** 2)
        return truth & (distance < rng.uniform(0.35, 0.85) * distance[truth].max())
    if kind == "shrunk":
        return ndimage.distance_transform_edt(truth, sampling=spacing) > rng.uniform(1.0, 4.0)
    outside = ndimage.distance_transform_edt(~truth, sampling=spacing)
    if kind == "blob":
        ring = np.argwhere((outside > 2) & (outside < 12))
        if len(ring):
            centre = crop.to_mm(ring[rng.integers(len(ring))], cfg)
            z, y, x = np.meshgrid(crop.z_mm, crop.pixel_mm(cfg), crop.pixel_mm(cfg), indexing="ij")
            ball = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < rng.uniform(3, 10) ** 2
            return truth | ball
    return outside < rng.uniform(1.5, 6.0)


def corrective_sequence(crop: LesionCrop, prediction: np.ndarray, cfg: ClickConfig, n: int) -> list[Click]:
    """Up to ``n`` corrective clicks on ``prediction``, each fixing the error region it is on
    before the next is placed."""
    out: list[Click] = []
    prediction = prediction.copy()
    for _ in range(n):
        found = clicks.largest_error(crop.truth, prediction, crop.spacing(cfg))
        if found is None:
            break
        region, voxel, positive = found
        out.append((*crop.to_mm(voxel, cfg), positive))
        prediction = prediction | region if positive else prediction & ~region
    return out


def add_simulated_scenarios(crop: LesionCrop, cfg: ClickConfig, rng: np.random.Generator, n: int = 3) -> None:
    """``n`` scenarios of up to three corrective clicks from simulated predictions."""
    first: Click = (0.0, 0.0, 0.0, True)
    crop.scenarios = [[first, *corrective_sequence(crop, simulated_prediction(crop, cfg, rng), cfg, 3)] for _ in range(n)]


# --------------------------------------------------------------------------------------- the network
def crop_input(crop: LesionCrop, slices: np.ndarray | slice, scenario: Sequence[Click], cfg: ClickConfig) -> torch.Tensor:
    """Network input in HU (image channels, then click maps) for ``slices`` of the crop."""
    pixel = crop.pixel_mm(cfg)
    positive = [c[:3] for c in scenario if c[3]]
    negative = [c[:3] for c in scenario if not c[3]]
    maps = clicknet.click_maps(crop.z_mm[slices], pixel, pixel, positive, negative, cfg)
    return torch.cat([crop.image[slices].float(), maps], dim=1)


def predict_crop(model: torch.nn.Module, crop: LesionCrop, scenario: Sequence[Click], cfg: ClickConfig) -> np.ndarray:
    """The network's lesion on the crop grid for ``scenario``'s clicks (component at the clicks)."""
    x = crop_input(crop, slice(None), scenario, cfg).to(next(model.parameters()).device)
    model.eval()
    with torch.inference_mode():
        prob = torch.sigmoid(model(clicknet.network_input(x[:, :cfg.image_channels], x[:, cfg.image_channels:], cfg))).cpu()
    model.train()
    voxels = [to_voxel(crop, c, cfg) for c in scenario]
    return clicknet.keep_clicked(prob.numpy() > cfg.threshold, [v for v, c in zip(voxels, scenario) if c[3]],
                                 [v for v, c in zip(voxels, scenario) if not c[3]])


def to_voxel(crop: LesionCrop, click: Click, cfg: ClickConfig) -> tuple[int, int, int]:
    """The crop voxel nearest to a click."""
    pixel = crop.pixel_mm(cfg)
    return (int(np.abs(crop.z_mm - click[0]).argmin()), int(np.abs(pixel - click[1]).argmin()),
            int(np.abs(pixel - click[2]).argmin()))


def refresh_scenarios(model: torch.nn.Module, crops: Sequence[LesionCrop], cfg: ClickConfig) -> None:
    """Scenarios from the network's own errors: click 1, the correction of its result, the
    correction of the result with both."""
    for crop in crops:
        scenario: list[Click] = [(0.0, 0.0, 0.0, True)]
        for _ in range(2):
            found = clicks.corrective_click(crop.truth, predict_crop(model, crop, scenario, cfg), crop.spacing(cfg))
            if found is None:
                break
            scenario.append((*crop.to_mm(found[0], cfg), found[1]))
        crop.own = [scenario]


def evaluate(model: torch.nn.Module, crops: Sequence[LesionCrop], cfg: ClickConfig, n_clicks: int = 3) -> np.ndarray:
    """Mean lesion Dice on the crop grids after click 1..``n_clicks`` (corrections at the largest error)."""
    scores = np.zeros((len(crops), n_clicks))
    for i, crop in enumerate(crops):
        scenario: list[Click] = [(0.0, 0.0, 0.0, True)]
        for k in range(n_clicks):
            prediction = predict_crop(model, crop, scenario, cfg)
            scores[i, k] = dice(prediction, crop.truth)
            found = clicks.corrective_click(crop.truth, prediction, crop.spacing(cfg))
            if found is not None:
                scenario.append((*crop.to_mm(found[0], cfg), found[1]))
    return scores.mean(axis=0)


def sample_batch(crops: Sequence[LesionCrop], cfg: ClickTrainConfig, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of single slices (HU image channels + click maps) and their truth."""
    inputs, truths = [], []
    for _ in range(cfg.batch_size):
        crop = crops[rng.integers(len(crops))]
        if rng.random() < cfg.first_only:
            scenario = crop.scenarios[0][:1]
        else:
            pool = crop.own if crop.own and rng.random() < 0.5 else crop.scenarios
            full = pool[rng.integers(len(pool))]
            scenario = full[:rng.integers(1, len(full) + 1)]
        on = np.flatnonzero(crop.truth.any(axis=(1, 2)))
        s = int(rng.choice(on)) if len(on) and rng.random() < cfg.lesion_slices else int(rng.integers(len(crop.z_mm)))
        inputs.append(crop_input(crop, slice(s, s + 1), scenario, cfg.click))
        truths.append(torch.from_numpy(crop.truth[s:s + 1]))
    return torch.cat(inputs), torch.cat(truths)


# ---------------------------------------------------------------------------------------- the run
def build_crops(seeds: Sequence[int], cfg: ClickTrainConfig, rng: np.random.Generator | None, log: Log) -> list[LesionCrop]:
    """Crops (with simulated scenarios) of the lesions of phantoms ``seeds``."""
    crops: list[LesionCrop] = []
    scenario_rng = rng if rng is not None else np.random.default_rng(0)
    t0 = time.perf_counter()
    for seed in seeds:
        for crop in lesion_crops(make_phantom(seed), cfg, rng):
            add_simulated_scenarios(crop, cfg.click, scenario_rng)
            crops.append(crop)
    log(f"{len(crops)} lesion crops from {len(seeds)} phantoms in {time.perf_counter() - t0:.0f} s")
    return crops


def train_clicks(cfg: ClickTrainConfig, out_dir: str | Path, log: Log = print, crops: Sequence[LesionCrop] | None = None,
                 val: Sequence[LesionCrop] | None = None, init: str | Path | None = None, device: str = "auto") -> Path:
    """Train a click model; writes ``out_dir/model.pt`` (best validation mean Dice over clicks
    1-3) and ``checkpoint.pt`` every ``epoch_steps``; returns the model's path. ``crops`` and
    ``val``: crops to train and validate on instead of those of the configured phantoms; ``init``:
    a click model file to continue from (its configs must be ``cfg``'s); ``device``: "auto" (CUDA
    when present), "cpu" or "cuda". Crops and click maps are made on the CPU; the network's steps
    and the augmentation run on the device."""
    dev = resolve_device(device)  # before the slow crops: a wrong device is a quick error
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_seeds = list(range(cfg.first_phantom, cfg.first_phantom + cfg.phantoms))
    val_seeds = list(range(VALIDATION_PHANTOM_SEED, VALIDATION_PHANTOM_SEED + cfg.val_phantoms))
    crops = build_crops(train_seeds, cfg, rng, log) if crops is None else crops
    val = build_crops(val_seeds, cfg, None, log) if val is None else val
    model = clicknet.build_click_model(cfg.click, cfg.net)
    if init is not None:
        model.load_state_dict(clicknet.load_click_model(init).state_dict())
    model = model.to(dev)
    log(f"training on {dev.type}")
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    best, t0, running, refreshed = -1.0, time.perf_counter(), 0.0, 0
    overhead = 0.0  # seconds spent redrawing scenarios: not part of a step's time
    step, budget = 0, cfg.minutes * 60
    model.train()
    while step < cfg.steps:
        if refreshed < len(cfg.refresh_at) and step >= cfg.refresh_at[refreshed] * cfg.steps:
            t = time.perf_counter()
            refresh_scenarios(model, crops, cfg.click)
            refreshed += 1
            overhead += time.perf_counter() - t
            log(f"step {step}: scenarios from the network's own errors ({time.perf_counter() - t:.0f} s)")
        batch, truth = sample_batch(crops, cfg, rng)
        batch, truth = augment(batch.to(dev), truth.to(dev), cfg.click.image_channels, generator, hu_shift=HU_SHIFT)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, cfg)  # type: ignore[arg-type]  # lr, warmup_steps and steps are all it reads
        k = cfg.click.image_channels
        loss = patch_loss(model(clicknet.network_input(batch[:, :k], batch[:, k:], cfg.click)), truth)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        step += 1
        if step == 50:  # fit the schedule to the time budget, from the measured step time
            per_step = (time.perf_counter() - t0 - overhead) / step
            cfg.steps = max(min(cfg.steps, int((budget - overhead) / per_step)), step + 1)
            log(f"{per_step:.2f} s per step: {cfg.steps} steps fit in {cfg.minutes:g} minutes")
        if step % cfg.epoch_steps == 0 or step == cfg.steps:
            scores = evaluate(model, val, cfg.click)
            mean = float(scores.mean())
            log(f"step {step}/{cfg.steps} loss {running:.4f} lr {lr_at(step - 1, cfg):.2e} "  # type: ignore[arg-type]
                f"{time.perf_counter() - t0:.0f}s | val Dice after clicks 1-3 {' '.join(f'{s:.3f}' for s in scores)}")
            with atomic_path(out / "checkpoint.pt") as tmp:
                torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step}, tmp)
            if mean > best:
                best = mean
                meta = {"train_config": plain_config(asdict(replace(cfg, click=cfg.click.to_dict(), net=cfg.net.to_dict()))),
                        "train_phantoms": [train_seeds[0], train_seeds[-1]], "val_phantoms": [val_seeds[0], val_seeds[-1]],
                        "step": step, "init": str(init) if init is not None else None, "device": dev.type,
                        "val_dice_clicks": [float(s) for s in scores], "train_crops": len(crops),
                        "sources": "synthetic phantoms generated by this project (training/phantom.py)"}
                digest = clicknet.save_click_model(model, out / "model.pt", meta)
                log(f"  best so far: wrote {out / 'model.pt'} (sha256 {digest[:12]})")
    return out / "model.pt"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--phantoms", type=int, default=60)
    parser.add_argument("--val-phantoms", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--epoch-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", help="a click model to continue training from")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--refresh-at", type=float, nargs="*", default=[0.45],
                        help="fractions of the run at which scenarios are redrawn from the network's own errors")
    parser.add_argument("--threads", type=int, default=1, help="1: the cores are shared, and two threads on a busy machine are slower")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when present (default), else the CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ClickTrainConfig(steps=args.steps, minutes=args.minutes, phantoms=args.phantoms, val_phantoms=args.val_phantoms,
                           batch_size=args.batch_size, epoch_steps=args.epoch_steps, seed=args.seed, lr=args.lr,
                           warmup_steps=args.warmup_steps, refresh_at=tuple(args.refresh_at))
    train_clicks(cfg, args.out, lambda line: print(line, flush=True), init=args.init, device=args.device)


if __name__ == "__main__":
    main()
