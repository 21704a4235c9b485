"""Test-time augmentation over the in-plane symmetries of a square patch.

The network sees each patch in several orientations (rotations by 90 degrees first, then
mirror images); the predictions are turned back and kept apart, so that how often they agree
measures how sure the refinement is at each pixel (the gate in ``lesion_gate`` uses it).
"""
from __future__ import annotations

from typing import Callable

import torch

# Symmetry k: bit 4 transposes, bit 1 flips columns, bit 2 flips rows (applied in that order).
# The first four are the rotations by 0, 180, 90 and 270 degrees.
ORDER = (0, 3, 5, 6, 1, 2, 4, 7)
MAX_AUGMENTATIONS = len(ORDER)


def forward(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` (..., P, P) under symmetry ``k``."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo ``forward(., k)``."""
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


def check_count(n: int) -> int:
    """``n`` as a number of augmentations, or ValueError."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_AUGMENTATIONS:
        raise ValueError(f"test-time augmentations must be a whole number from 1 to {MAX_AUGMENTATIONS} (got {n!r})")
    return n


def augmented(x: torch.Tensor, n: int) -> torch.Tensor:
    """The N patches ``x`` (N, C, P, P) in the first ``n`` orientations of ``ORDER``: (n * N, C, P, P)."""
    return torch.cat([forward(x, k) for k in ORDER[:n]])


def restored(logits: torch.Tensor, n: int) -> torch.Tensor:
    """Probabilities (n, N, P, P) from the network's logits (n * N, P, P) for ``augmented(x, n)``,
    each turned back to the patch's own orientation."""
    probs = torch.sigmoid(logits.float()).view(n, len(logits) // n, *logits.shape[1:])
    return torch.stack([inverse(p, k) for p, k in zip(probs, ORDER[:n])])


def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """Probabilities (n, N, P, P) of the N patches ``x`` (N, C, P, P) seen in the first ``n``
    orientations of ``ORDER``, each turned back to the patch's own orientation."""
    return restored(model(augmented(x, n)), n)
