"""Phantom training data made by worker processes, for machines with many cores beside a GPU.

On two cores the phantoms are made one at a time as training consumes them (``livertumorrefine
train``, ``clicktrain``). On a GPU host the network's steps are quick and the data is the slow part:
here each worker makes whole phantoms and cuts them (the refiner's boundary patches, or the click
model's lesion crops with their click scenarios), and the run trains on the result.

    python -m LiverTumorRefineLib.training.parallel refiner --out runs/brnet --phantoms 300 --minutes 5 --workers 7
    python -m LiverTumorRefineLib.training.parallel clicks --out runs/clicks --phantoms 300 --minutes 5 --workers 7

Each phantom's randomness comes from (run seed, phantom seed), so a run is the same for any number
of workers.
"""
from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from LiverTumorRefineLib.device import DEVICES
from LiverTumorRefineLib.training import clicktrain
from LiverTumorRefineLib.training.clicktrain import ClickTrainConfig, LesionCrop
from LiverTumorRefineLib.training.phantom import make_phantom
from LiverTumorRefineLib.training.train import CutCase, TrainConfig, cut_training_patches, train
from LiverTumorRefineLib.training.trainset import DEFAULT_PHANTOM_SEED, VALIDATION_PHANTOM_SEED, with_coarse

Log = Callable[[str], None]


def _map(function: Callable, jobs: list, workers: int) -> list:
    """``function`` over ``jobs`` in ``workers`` processes (in order), or here when ``workers`` is 1."""
    if workers <= 1:
        return [function(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return pool.map(function, jobs, chunksize=1)


def _phantom_patches(job: tuple[int, int, TrainConfig]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, inputs, truth) per coarse variant of phantom ``seed``; numpy arrays travel between
    processes as plain bytes."""
    seed, variants, cfg = job
    rng = np.random.default_rng([cfg.seed, seed])
    cases = with_coarse(iter([make_phantom(seed)]), variants, int(rng.integers(2 ** 31)))
    return [(case.name, *(t.numpy() for t in cut_training_patches(case, cfg.patch, cfg.extra_centres, rng))) for case in cases]


def refiner_cases(seeds: Sequence[int], variants: int, cfg: TrainConfig, workers: int) -> list[CutCase]:
    """The refiner's training patches of phantoms ``seeds`` (``variants`` simulated coarse masks each)."""
    rows = _map(_phantom_patches, [(seed, variants, cfg) for seed in seeds], workers)
    return [CutCase(name, torch.from_numpy(x), torch.from_numpy(y)) for case in rows for name, x, y in case]


def _phantom_crops(job: tuple[int, ClickTrainConfig, bool]) -> list[LesionCrop]:
    """Phantom ``seed``'s lesion crops with simulated click scenarios; first clicks at random
    (training) or at the deepest point (validation). Images travel as numpy arrays."""
    seed, cfg, random = job
    rng = np.random.default_rng([cfg.seed, seed])
    crops = clicktrain.lesion_crops(make_phantom(seed), cfg, rng if random else None)
    for crop in crops:
        clicktrain.add_simulated_scenarios(crop, cfg.click, rng)
        crop.image = crop.image.numpy()  # type: ignore[assignment]
    return crops


def click_crops(seeds: Sequence[int], cfg: ClickTrainConfig, workers: int, random: bool = True) -> list[LesionCrop]:
    """The click model's lesion crops of phantoms ``seeds`` (``random``: first clicks at random)."""
    rows = _map(_phantom_crops, [(seed, cfg, random) for seed in seeds], workers)
    return [replace(crop, image=torch.from_numpy(crop.image)) for crops in rows for crop in crops]


def train_refiner(cfg: TrainConfig, out: str | Path, phantoms: int, first: int, variants: int, workers: int,
                  device: str, log: Log) -> Path:
    """A refiner trained on phantoms ``first``.. (made by ``workers`` processes), validated on 6
    validation phantoms as ``livertumorrefine train`` does."""
    t0 = time.perf_counter()
    cases = refiner_cases(range(first, first + phantoms), variants, cfg, workers)
    val = list(with_coarse((make_phantom(VALIDATION_PHANTOM_SEED + i) for i in range(6)), 1, cfg.seed + 1))
    log(f"{len(cases)} training cases from {phantoms} phantoms in {time.perf_counter() - t0:.0f} s ({workers} workers)")
    return train(cfg, cases, val, out, device=device, log=log)


def train_click_model(cfg: ClickTrainConfig, out: str | Path, workers: int, device: str, log: Log) -> Path:
    """A click model trained on ``cfg``'s phantoms, their crops made by ``workers`` processes."""
    t0 = time.perf_counter()
    crops = click_crops(range(cfg.first_phantom, cfg.first_phantom + cfg.phantoms), cfg, workers)
    val = click_crops(range(VALIDATION_PHANTOM_SEED, VALIDATION_PHANTOM_SEED + cfg.val_phantoms), cfg, workers, random=False)
    log(f"{len(crops)} training crops from {cfg.phantoms} phantoms in {time.perf_counter() - t0:.0f} s ({workers} workers)")
    return clicktrain.train_clicks(cfg, out, log, crops=crops, val=val, device=device)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["refiner", "clicks"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--phantoms", type=int, default=300)
    parser.add_argument("--first-phantom", type=int, default=DEFAULT_PHANTOM_SEED)
    parser.add_argument("--variants", type=int, default=2, help="refiner: simulated coarse masks per phantom")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-time budget of the training steps")
    parser.add_argument("--steps", type=int, default=100_000, help="upper bound on the steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epoch-steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, (multiprocessing.cpu_count() or 2) - 1))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    args = parser.parse_args(argv)
    if args.phantoms < 1 or args.workers < 1 or not args.minutes > 0:
        parser.error("--phantoms and --workers must be at least 1 and --minutes above 0")
    torch.set_num_threads(args.threads)
    log: Log = lambda line: print(line, flush=True)  # noqa: E731
    options = {k: v for k, v in (("batch_size", args.batch_size), ("epoch_steps", args.epoch_steps)) if v is not None}
    if args.model == "refiner":
        cfg = replace(TrainConfig(), steps=args.steps, minutes=args.minutes, seed=args.seed, **options)
        train_refiner(cfg, args.out, args.phantoms, args.first_phantom, args.variants, args.workers, args.device, log)
    else:
        click_cfg = replace(ClickTrainConfig(), steps=args.steps, minutes=args.minutes, seed=args.seed, phantoms=args.phantoms,
                            first_phantom=args.first_phantom, **options)
        train_click_model(click_cfg, args.out, args.workers, args.device, log)


if __name__ == "__main__":
    main()
