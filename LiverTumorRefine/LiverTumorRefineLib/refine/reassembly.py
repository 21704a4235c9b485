"""Paste refined patch probabilities back onto the voxel grid.

Each covered voxel takes the probability of the patch pixel its centre falls in (patch pixels are
no larger than voxels with the default config, so this is a point sample of the prediction at the
voxel centre); overlapping patches are averaged with sum and count canvases (scatter-add on the
device); voxels outside every patch keep the coarse label. With patches cut from the mask itself
the result is the input exactly, so only the boundary band the network changes can change.
"""
from __future__ import annotations

from typing import Sequence

import torch

from LiverTumorRefineLib.config import PatchConfig
from LiverTumorRefineLib.refine.sampling import patch_voxel_index, window_offsets


class Canvas:
    """Running sum and count of patch probabilities over a (Z, Y, X) grid."""

    def __init__(self, shape: Sequence[int], device: torch.device) -> None:
        self.shape = tuple(int(s) for s in shape)
        n = self.shape[0] * self.shape[1] * self.shape[2]
        self.total = torch.zeros(n, device=device, dtype=torch.float32)
        self.count = torch.zeros(n, device=device, dtype=torch.float32)
        self.votes = torch.zeros(n, device=device, dtype=torch.float32)  # predictions >= 0.5

    def add(self, probs: torch.Tensor, centres: torch.Tensor, spacing_zyx: Sequence[float], cfg: PatchConfig) -> None:
        """Accumulate (N, P, P) probabilities of patches centred at ``centres`` (N, 3)."""
        if len(centres) == 0:
            return
        _, _, iy, ix = window_offsets(spacing_zyx, cfg, centres.device)
        p = cfg.patch_px
        values = probs.float()[:, iy.clamp(0, p - 1)[:, None], ix.clamp(0, p - 1)[None, :]]
        index, valid = patch_voxel_index(centres, self.shape, spacing_zyx, cfg)
        # Allocate everything first so a CUDA OOM leaves the canvas untouched (the Refiner retries).
        index, values = index[valid], values[valid]
        ones = torch.ones_like(values)
        votes = (values >= 0.5).float()
        self.total.index_add_(0, index, values)
        self.count.index_add_(0, index, ones)
        self.votes.index_add_(0, index, votes)

    def result(self, coarse: torch.Tensor, editable: torch.Tensor | None = None, threshold: float = 0.5) -> torch.Tensor:
        """Thresholded average where covered (and ``editable``, if given), the coarse label
        elsewhere. (Z, Y, X) bool."""
        return self.proposal(coarse, editable, threshold)[0]

    def disagreement(self, editable: torch.Tensor | None = None) -> torch.Tensor:
        """(Z, Y, X) bool: the voxels that some predictions (test-time augmentations and
        overlapping patches) put inside the tumour and others outside, where covered (and
        ``editable``, if given): where the refinement is unsure."""
        covered = self.count > 0
        if editable is not None:
            covered &= editable.reshape(-1)
        return (covered & (self.votes > 0) & (self.votes < self.count)).view(self.shape)

    def mean(self) -> torch.Tensor:
        """(Z, Y, X) mean prediction per voxel (0 where nothing was predicted)."""
        return (self.total / self.count.clamp(min=1)).view(self.shape)

    def proposal(self, coarse: torch.Tensor, editable: torch.Tensor | None = None,
                 threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """The ungated result (as ``result``) and, per voxel, the fraction of
        the predictions that agree with it (1 where nothing was predicted). (Z, Y, X) each."""
        covered = self.count > 0
        if editable is not None:
            covered &= editable.reshape(-1)
        count = self.count.clamp(min=1)
        inside = self.total / count >= threshold
        refined = torch.where(covered, inside, coarse.reshape(-1).bool())
        votes = self.votes / count
        sure = torch.where(covered, torch.where(inside, votes, 1 - votes), torch.ones_like(votes))
        return refined.view(self.shape), sure.view(self.shape)
