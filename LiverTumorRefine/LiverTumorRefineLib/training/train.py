"""Training BRNet on boundary patches cut by the same code as inference.

Cases (CT, truth) come from a phantom recipe or a dataset folder; each gets simulated coarse
masks, patches are cut along the coarse boundary exactly as ``Refiner`` cuts them, and the
network learns the truth patch from image + mask patch under strong augmentation.
Runs on CPU or CUDA (autocast), and multi-GPU under ``torchrun`` (DistributedDataParallel).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import distributed as dist
from torch.nn import functional as F

from LiverTumorRefineLib.refine import sampling
from LiverTumorRefineLib.volume.atomic import atomic_path
from LiverTumorRefineLib.training.augment import augment
from LiverTumorRefineLib.training.case import RefineCase
from LiverTumorRefineLib.refine.boxes import crop_margin, lesion_box
from LiverTumorRefineLib.config import NetConfig, PatchConfig
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.evaluate.metrics import compute_metrics
from LiverTumorRefineLib.refine.network import BRNet, build_model
from LiverTumorRefineLib.device import resolve_device
from LiverTumorRefineLib.refine.refiner import Refiner
from LiverTumorRefineLib.refine.weights import save_model

Log = Callable[[str], None]

# Random HU offset in augmentation: with raw HU it stands for other phases and scanners; with the
# liver pinned to a reference it only needs to cover the error of the parenchyma estimate.
HU_SHIFT = {"none": 40.0, "liver": 15.0}


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all stored in the model's metadata)."""

    steps: int = 6000  # upper bound when ``minutes`` is set
    # Wall-time budget of the optimisation steps (None: run all ``steps``). After 50 steps the
    # schedule is fitted to it from the measured step time, as the click model's training does.
    minutes: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    epoch_steps: int = 1000  # validation and checkpoint interval
    seed: int = 0
    extra_centres: float = 2.0  # random band centres per NMS centre, for variety
    # BCE weight of the voxels whose coarse label is already right: above 1, a change must be more
    # likely right than wrong by that ratio to pay (weight 3: 75 %), so the network changes less.
    keep_weight: float = 1.0
    # the coarse simulator's share of lesions given their true mask (``trainset.with_coarse``): kept
    # here so that the model's metadata records the training data's recipe
    exact_share: float = 0.0
    patch: PatchConfig = field(default_factory=PatchConfig)
    net: NetConfig = field(default_factory=NetConfig)


def cut_training_patches(case: RefineCase, cfg: PatchConfig, extra: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (HU image channels + coarse mask) and truth patches along ``case.coarse``'s boundary.

    The NMS centres are those inference would use; ``extra`` times as many random band voxels
    are added so the network sees patches at every offset along the boundary.
    """
    if not case.coarse.any():
        return torch.zeros((0, cfg.in_channels, cfg.patch_px, cfg.patch_px)), torch.zeros((0, cfg.patch_px, cfg.patch_px), dtype=torch.bool)
    box = lesion_box(case.coarse, crop_margin(case.spacing_zyx, cfg))
    coarse = torch.from_numpy(np.ascontiguousarray(case.coarse[box]))
    truth = torch.from_numpy(np.ascontiguousarray(case.truth[box]))
    image = sampling.clean_hu(torch.from_numpy(np.ascontiguousarray(case.image[box], dtype=np.float32)), cfg.hu_window)
    if cfg.normalise == "liver":  # exactly as the Refiner will see it
        image = sampling.normalised(image, sampling.parenchyma_hu(image, coarse, case.spacing_zyx), cfg)
    centres = sampling.place_centres(coarse, case.spacing_zyx, cfg)
    band = sampling.boundary_band(coarse).nonzero()
    n_extra = min(int(extra * len(centres)), len(band))
    if n_extra:
        pick = torch.from_numpy(rng.choice(len(band), n_extra, replace=False))
        centres = torch.cat([centres, band[pick]])
    patches = sampling.extract_patches(image, coarse, centres, case.spacing_zyx, cfg)
    # Outside the editable band inference keeps the coarse label, so that is the target there.
    editable = sampling.cut_mask_patches(sampling.editable_band(coarse, case.spacing_zyx, cfg.band_mm), centres, case.spacing_zyx, cfg)
    target = torch.where(editable, sampling.cut_mask_patches(truth, centres, case.spacing_zyx, cfg),
                         sampling.cut_mask_patches(coarse, centres, case.spacing_zyx, cfg))
    return patches.half(), target


@dataclass
class CutCase:
    """A training case whose patches are already cut (``cut_training_patches``), e.g. by worker
    processes: ``inputs`` (N, C, P, P) float16 HU, ``truth`` (N, P, P) bool."""

    name: str
    inputs: torch.Tensor
    truth: torch.Tensor


def build_bank(cases: Iterable[RefineCase | CutCase], cfg: PatchConfig, extra: float, seed: int,
               log: Log = print) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All training patches in memory: inputs (N, C, P, P) float16 in HU, truth (N, P, P) bool,
    and the case names. ``cases`` is consumed once, one case at a time; a ``CutCase`` brings its
    patches with it."""
    rng = np.random.default_rng(seed)
    inputs, truths, names = [], [], []
    for case in cases:
        x, y = (case.inputs, case.truth) if isinstance(case, CutCase) else cut_training_patches(case, cfg, extra, rng)
        inputs.append(x)
        truths.append(y)
        names.append(case.name)
    if not inputs or sum(len(x) for x in inputs) == 0:
        raise RefineError("No training patches: the coarse masks of the training cases are all empty.")
    log(f"patch bank: {sum(len(x) for x in inputs)} patches from {len(names)} cases")
    return torch.cat(inputs), torch.cat(truths), names


def patch_loss(logits: torch.Tensor, truth: torch.Tensor, coarse: torch.Tensor | None = None,
               keep_weight: float = 1.0) -> torch.Tensor:
    """BCE + soft Dice. BCE alone under-weights the thin band where coarse and truth disagree;
    Dice on the whole batch counters the class imbalance of patches mostly inside or outside.
    With ``coarse`` (the mask patches, bool), the BCE of voxels where it equals the truth is
    weighted ``keep_weight`` (``TrainConfig.keep_weight``)."""
    weight = None
    if coarse is not None and keep_weight != 1.0:
        weight = torch.where(coarse == (truth > 0.5), keep_weight, 1.0).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, truth, weight=weight)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)
    return bce + dice


def validate(model: BRNet, cases: Sequence[RefineCase], device: str) -> list[dict[str, float]]:
    """Per case: coarse and refined Dice and ASSD against truth with the current model."""
    refiner = Refiner(model, device=device)
    rows = []
    for case in cases:
        if not case.coarse.any():
            continue
        refined = refiner.refine(case.image, case.coarse, case.spacing_zyx).mask
        before = compute_metrics(case.truth, case.coarse, case.spacing_zyx)
        after = compute_metrics(case.truth, refined, case.spacing_zyx)
        rows.append({"case": case.name, "coarse_dice": before["dice"], "refined_dice": after["dice"],
                     "coarse_assd": before["assd"], "refined_assd": after["assd"]})
    model.train()
    return rows


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 2% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def train(cfg: TrainConfig, train_cases: Iterable[RefineCase | CutCase], val_cases: Sequence[RefineCase], out_dir: str | os.PathLike,
          device: str = "auto", resume: bool = False, log: Log = print, progress: Callable[[float, str], object] | None = None,
          init: BRNet | None = None) -> Path:
    """Train and write ``out_dir/model.pt`` (+ ``.sha256``); returns its path.

    ``init``: a model to start from (fine-tuning a site's own data); its patch and net configs
    must be those of ``cfg``.

    ``out_dir/checkpoint.pt`` is written every ``cfg.epoch_steps`` steps; ``resume`` continues
    from it. Deterministic for a given seed on the CPU.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, local_rank = _distributed()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    torch.manual_seed(cfg.seed)
    inputs, truths, train_names = build_bank(train_cases, cfg.patch, cfg.extra_centres, cfg.seed, log if rank == 0 else _quiet)
    if rank == 0:
        log(f"validating on {len(val_cases)} cases every {cfg.epoch_steps} steps; {cfg.steps} steps of {cfg.batch_size} patches")
    model = build_model(cfg.patch, cfg.net)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model = model.to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1000 + rank)
    aug_generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + rank + 1)
    generators = {"sampler": generator, "augment": aug_generator}
    run = _run_identity(cfg, train_names)
    start = 0
    if resume:
        start, cfg.steps = _load_checkpoint(out / "checkpoint.pt", model, optimiser, generators, run, log)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    model.train()
    t0, running, overhead = time.perf_counter(), 0.0, 0.0  # overhead: validation, not part of a step's time
    step = start
    while step < cfg.steps:
        index = torch.randint(len(inputs), (cfg.batch_size,), generator=generator)
        batch, truth = augment(inputs[index].to(dev), truths[index].to(dev), cfg.patch.image_channels, aug_generator,
                               hu_shift=HU_SHIFT[cfg.patch.normalise])
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            coarse = batch[:, cfg.patch.image_channels] > 0.5 if cfg.keep_weight != 1.0 else None
            loss = patch_loss(net(sampling.network_input(batch, cfg.patch)).float(), truth, coarse, cfg.keep_weight)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step > start else value
        step += 1
        if cfg.minutes is not None and step - start == 50 and not resume:  # a resumed run keeps its fitted schedule
            cfg.steps = _fit_steps(cfg, step, (time.perf_counter() - t0 - overhead) / 50, world, log if rank == 0 else _quiet)
        if progress is not None and rank == 0:
            progress(step / cfg.steps, f"step {step} loss {running:.3f}")
        if rank == 0 and (step % cfg.epoch_steps == 0 or step == cfg.steps):
            t = time.perf_counter()
            _end_of_epoch(model, optimiser, generators, step, cfg, val_cases, dev, out, running,
                          time.perf_counter() - t0, run, log)
            overhead += time.perf_counter() - t
    if world > 1:
        dist.barrier()
    path = out / "model.pt"
    if rank == 0:
        meta = {"train_config": plain_config(asdict(cfg)), "train_cases": train_names,  # steps: as run
                "val_cases": [c.name for c in val_cases], "steps": cfg.steps}
        digest = save_model(model.cpu().eval(), path, meta)
        log(f"wrote {path} (sha256 {digest})")
    return path


def _fit_steps(cfg: TrainConfig, step: int, per_step: float, world: int, log: Log) -> int:
    """The number of steps that fit ``cfg.minutes`` at ``per_step`` seconds (at most ``cfg.steps``,
    at least one more). Under torchrun every rank takes rank 0's figure, so they stop together."""
    steps = max(min(cfg.steps, int(cfg.minutes * 60 / per_step)), step + 1)  # type: ignore[operator]
    if world > 1:
        shared = torch.tensor([steps], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(shared, 0)
        steps = int(shared.item())
    log(f"{per_step:.3f} s per step: {steps} steps fit in {cfg.minutes:g} minutes")
    return steps


def _end_of_epoch(model: BRNet, optimiser: torch.optim.Optimizer, generators: dict[str, torch.Generator], step: int, cfg: TrainConfig, val_cases: Sequence[RefineCase],
                  dev: torch.device, out: Path, loss: float, seconds: float, run: dict, log: Log) -> None:
    rows = validate(model, val_cases, dev.type) if val_cases else []
    summary = ""
    if rows:
        coarse = np.mean([r["coarse_dice"] for r in rows])
        refined = np.mean([r["refined_dice"] for r in rows])
        summary = f" | val Dice coarse {coarse:.4f} refined {refined:.4f} ({refined - coarse:+.4f}, {len(rows)} cases)"
    log(f"step {step}/{cfg.steps} loss {loss:.4f} lr {lr_at(step - 1, cfg):.2e} {seconds:.0f}s{summary}")
    state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step, "steps_total": cfg.steps,
             "generators": {k: g.get_state() for k, g in generators.items()}, "run": run}
    with atomic_path(out / "checkpoint.pt") as tmp:  # a crash mid-save never leaves a broken checkpoint
        torch.save(state, tmp)


def _run_identity(cfg: TrainConfig, train_names: Sequence[str]) -> dict:
    """What must match for a checkpoint to continue this run: every option that changes the
    result (the validation/checkpoint interval does not) and the training cases."""
    options = plain_config(asdict(cfg))
    options.pop("epoch_steps")
    return {"options": options, "train_cases": list(train_names)}


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def _load_checkpoint(path: Path, model: BRNet, optimiser: torch.optim.Optimizer, generators: dict[str, torch.Generator],
                     run: dict, log: Log) -> int:
    if not path.is_file():
        raise RefineError(f"--resume: no checkpoint at {path}; start without --resume.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("run")
    if saved is not None:  # checkpoints from before this check carry no identity
        was, now = _flat(saved["options"]), _flat(run["options"])
        changed = [f"{key} {was.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
        if changed:
            raise RefineError(f"--resume: {path} was made with other options ({'; '.join(changed)}): pass the same "
                              "options as that run, or start a new run in another --out folder.")
        if saved["train_cases"] != run["train_cases"]:
            raise RefineError(f"--resume: {path} was trained on other cases than --data gives now "
                              f"({len(saved['train_cases'])} then, {len(run['train_cases'])} now): pass the same --data.")
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    log(f"resumed from {path} at step {state['step']}")
    return int(state["step"]), int(state.get("steps_total", run["options"]["steps"]))  # older checkpoints: the options' steps


def plain_config(value):
    """Configs as JSON-like primitives (tuples to lists) for the model's metadata."""
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    return value


def _quiet(_: str) -> None:
    pass
