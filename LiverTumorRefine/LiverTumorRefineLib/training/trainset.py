"""Where training and validation cases come from: phantom recipes or dataset folders.

Data specs: ``phantom:N`` or ``phantom:N:SEED`` (N generated phantoms, seeds SEED..SEED+N-1,
default SEED 1000), or a folder that ``datasets.find_cases`` understands (LiTS, MSD Task03, or
our ``<name>_ct.nii.gz`` + ``<name>_label.nii.gz`` layout). LiTS case 117 is our real-CT
evaluation case and is refused as training data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from LiverTumorRefineLib.training.coarse_simulator import load_coarse_folder, simulate_coarse
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.training.phantom import Case, make_phantom
from LiverTumorRefineLib.training.case import RefineCase

DEFAULT_PHANTOM_SEED = 1000
VALIDATION_PHANTOM_SEED = 50_000  # training 1000+, validation 50000+, evaluation 90000+
EVALUATION_PHANTOM_SEED = 90_000


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: a phantom recipe or a folder."""

    phantoms: int = 0
    seed: int = DEFAULT_PHANTOM_SEED
    folder: Path | None = None

    def cases(self) -> Iterator[Case]:
        """The cases, generated or read one at a time (they are large)."""
        if self.folder is None:
            for i in range(self.phantoms):
                yield make_phantom(self.seed + i)
        else:
            from LiverTumorRefineLib.training.datasets import find_cases

            yield from find_cases(str(self.folder))


def parse_spec(spec: str) -> DataSpec:
    """``phantom:N[:SEED]`` or a folder; RefineError on anything else."""
    if spec.lower() == "lits117":
        raise RefineError("lits117 is the real-CT evaluation case: it must not be used for training or model selection.")
    if spec.startswith("phantom:"):
        parts = spec.split(":")
        try:
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else DEFAULT_PHANTOM_SEED
        except (IndexError, ValueError):
            raise RefineError(f"Bad data spec {spec!r}: use phantom:N or phantom:N:SEED.") from None
        if n < 1 or len(parts) > 3:
            raise RefineError(f"Bad data spec {spec!r}: use phantom:N or phantom:N:SEED with N >= 1.")
        return DataSpec(phantoms=n, seed=seed)
    if spec.startswith("dicomseg:"):
        return DataSpec(folder=Path(spec))  # datasets.find_cases reads the prefix
    folder = Path(spec)
    if not folder.is_dir():
        raise RefineError(f"Data spec {spec!r} is neither phantom:N[:SEED] nor an existing folder.")
    return DataSpec(folder=folder)


def with_coarse(cases: Iterator[Case], variants: int, seed: int, coarse_dir: str | Path | None = None,
                exact_share: float = 0.0) -> Iterator[RefineCase]:
    """Refinement cases with ``variants`` simulated coarse masks per case (``exact_share``: the
    simulator's share of lesions segmented right), or the real coarse prediction from ``coarse_dir``
    when one is given."""
    rng = np.random.default_rng(seed)
    for case in cases:
        truth = case.label.array == 2
        image = case.image.array.astype(np.float32, copy=False)
        spacing = case.image.spacing_zyx
        if coarse_dir is not None:
            coarse = load_coarse_folder(coarse_dir, case.name, reference=case.image)
            yield RefineCase(case.name, image, truth, coarse.array.astype(bool), spacing)
            continue
        for v in range(variants):
            coarse = simulate_coarse(truth, spacing, rng, image=image, exact_share=exact_share)
            yield RefineCase(f"{case.name}#{v}", image, truth, coarse, spacing)


def split_every(cases: Iterable[RefineCase], n: int) -> tuple[Iterator[RefineCase], list[RefineCase]]:
    """(training cases, validation cases): the first coarse variant of every ``n``-th source case
    is held out for validation, its other variants dropped. Training cases stay a lazy iterator
    so a large dataset is never all in memory; the validation list fills as it is consumed, which
    ``train`` does before it first validates."""
    held: list[RefineCase] = []

    def training() -> Iterator[RefineCase]:
        source, index = None, -1
        for case in cases:
            base = case.name.split("#")[0]
            if base != source:
                source, index = base, index + 1
            if index % n == n - 1:
                if not any(h.name.split("#")[0] == base for h in held):
                    held.append(case)
                continue
            yield case

    return training(), held
