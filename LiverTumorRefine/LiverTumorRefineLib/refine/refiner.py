"""The refinement pipeline on arrays: crop, sample boundary patches, infer, reassemble."""
from __future__ import annotations

import copy
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from LiverTumorRefineLib.refine import sampling
from LiverTumorRefineLib.refine import tta as tta_module
from LiverTumorRefineLib.refine.result_cache import DEFAULT_BYTES, PATCH_BYTES, ResultCache, digest
from LiverTumorRefineLib.refine.boxes import Box, crop_margin, lesion_boxes
from LiverTumorRefineLib.volume.checks import check_not_whole_volume
from LiverTumorRefineLib.device import resolve_device
from LiverTumorRefineLib.config import (AGREEMENT, INTENSITY_GATE, MIN_KEPT, REMOVAL_AGREEMENT, SEEDED_REFINEMENT,
                                        SHRINK, SHRINK_MODES, TTA, Passes)
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.progress import Progress, part, report
from LiverTumorRefineLib.refine.gate import box_origin, lesion_gate
from LiverTumorRefineLib.refine.intensity import IntensityDecision, gate_summary, intensity_gate
from LiverTumorRefineLib.refine.network import BRNet
from LiverTumorRefineLib.refine.reassembly import Canvas
from LiverTumorRefineLib.refine.runtime import TorchRuntime, select_runtime
from LiverTumorRefineLib.refine.weights import default_weights_path, load_model



@dataclass
class RefineResult:
    """Refined mask (same shape as the input), what it cost, and ``uncertain``: the voxels where
    the augmented predictions disagree (``Canvas.disagreement``; bool, same shape)."""

    mask: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    uncertain: np.ndarray | None = None


MAX_PASSES = 4  # a bound on the work one call may ask for; only 1 and 2 have been measured


def changed_voxels(before: np.ndarray, after: np.ndarray) -> int:
    """How many voxels differ between two masks of one shape (bool or 0/1), counted slab by slab:
    no mask-sized temporary (1 GB at 1024x1024x1000)."""
    return sum(int(np.count_nonzero(np.asarray(before[z:z + sampling.SLAB], dtype=bool) != after[z:z + sampling.SLAB]))
               for z in range(0, before.shape[0], sampling.SLAB))


class Refiner:
    """Boundary patch refinement with a BRNet.

    ``weights``: None (the shipped default model), a model file, or a BRNet built by
    ``network.build_model``. ``device``: "auto", "cpu" or "cuda". ``tta``: orientations each
    patch is predicted in (1-8); ``agreement``: share of those predictions that must agree before
    a voxel joins the tumour, ``removal_agreement``: before one leaves it (0 and 0: no voxel
    gate); ``min_kept``: the share of a lesion's
    coarse voxels it keeps at least, when the refinement is fully sure (see ``gate``); ``shrink``:
    what happens to a lesion that would shrink more: "revert" gives it its coarse outline back,
    "cap" gives back only the removed voxels the network was least sure of, up to the limit.
    ``intensity_gate``: also refuse the changes the CT's intensities contradict (see ``intensity``).
    ``runtime``: what runs the network ("auto", "torch" or "onnx", see ``runtime.select_runtime``);
    ``batch_size``: network inputs cut and accumulated together (the runtime feeds them to the
    network in chunks of the size it runs fastest at). ``seeded``: how ``refine_seeded`` refines a
    click-made mask (default ``config.SEEDED_REFINEMENT``).
    """

    def __init__(self, weights: str | os.PathLike | BRNet | None = None, device: str = "auto", batch_size: int = 128,
                 min_kept: float = MIN_KEPT, tta: int = TTA, agreement: float = AGREEMENT,
                 shrink: str = SHRINK, runtime: str = "auto", removal_agreement: float = REMOVAL_AGREEMENT,
                 intensity_gate: bool = INTENSITY_GATE, seeded: Passes = SEEDED_REFINEMENT) -> None:
        if not 0 <= min_kept <= 1:
            raise RefineError(f"min_kept must be between 0 and 1 (got {min_kept}).")
        for name, value in (("agreement", agreement), ("removal_agreement", removal_agreement)):
            if not 0 <= value <= 1:
                raise RefineError(f"{name} must be between 0 and 1 (got {value}).")
        self.tta = check_tta(tta)
        if shrink not in SHRINK_MODES:
            raise RefineError(f"shrink must be one of {', '.join(SHRINK_MODES)} (got {shrink!r}).")
        self.min_kept, self.agreement, self.shrink = min_kept, agreement, shrink
        self.removal_agreement = removal_agreement
        self.intensity_gate = check_gate(intensity_gate)
        self.seeded = check_passes(seeded)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise RefineError(f"The batch size must be a whole number of at least 1 (got {batch_size!r}).")
        self.device = resolve_device(device)
        path = None if isinstance(weights, torch.nn.Module) else Path(weights or default_weights_path())
        model = weights if path is None else load_model(path)
        self.model: BRNet = model.to(self.device).eval()
        self.cfg = model.patch_config  # type: ignore[attr-defined]
        self.runtime = select_runtime(runtime, self.model, self.device, path)
        self.batch_size = batch_size
        self.boxes: ResultCache | None = None  # see keep_boxes
        self.patches: ResultCache | None = None  # ... and the patches' predictions

    def keep_boxes(self, max_bytes: int = DEFAULT_BYTES, patch_bytes: int = PATCH_BYTES) -> None:
        """From now on keep each box's result, and give it back when a later call refines a box with
        the same inputs (``result_cache``): a kept worker's click refines only the boxes it changed.
        Where the runtime's predictions do not depend on the batch a patch is in
        (``batch_invariant``: the int8 ONNX export), also keep each patch's prediction by its network
        input: in a box that a click changed, the patches along the lesions it did not change are
        not predicted again. Results are identical either way. A second call keeps what is already kept."""
        if self.boxes is None:
            self.boxes = ResultCache(max_bytes)
        if self.patches is None and getattr(self.runtime, "batch_invariant", False):
            self.patches = ResultCache(patch_bytes)

    def refine(self, image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float], progress: Progress | None = None,
               passes: int = 1, later_tta: int | None = None, first_tta: int | None = None) -> RefineResult:
        """Refine ``mask`` (bool, z-y-x) on ``image`` (HU). Inputs are not modified.

        ``passes`` > 1 refines the result again (the seeded sources' default, ``config.SEEDED_PASSES``:
        a click-made coarse mask is far from the boundary, and a second pass moves it further);
        ``stats`` then add up the passes' patches, seconds, reused boxes and reused patches, count the
        voxels changed from ``mask``, and keep the first pass's per-lesion decisions (against ``mask``).
        ``later_tta``: the orientations each patch is predicted in on the passes after the first (None:
        the Refiner's ``tta``; the seeded sources', ``config.SEEDED_LATER_TTA``); ``stats["later_tta"]`` says
        which when ``passes`` > 1. ``first_tta``: the same for the first pass (None: the Refiner's ``tta``;
        the seeded sources', ``config.SEEDED_FIRST_TTA``); ``stats["tta"]`` says which."""
        check_pass_count(passes)
        first = self if first_tta is None else self.with_tta(first_tta)
        later = self if later_tta is None else self.with_tta(later_tta)

        def pass_progress(k: int) -> Progress | None:
            return progress if passes == 1 else part(progress, k / passes, (k + 1) / passes, f"Pass {k + 1} of {passes}: ")

        result = first._refine_once(image, mask, spacing_zyx, pass_progress(0))
        for k in range(1, passes):
            again = later._refine_once(image, result.mask, spacing_zyx, pass_progress(k))
            stats = dict(result.stats, **{key: result.stats[key] + again.stats[key]
                                          for key in ("patches", "boxes_reused", "patches_reused")})
            stats["seconds"] = {key: value + again.stats["seconds"][key] for key, value in result.stats["seconds"].items()}
            # either pass's disagreement, written only where there is some: the map's untouched pages
            # stay unallocated (an OR of the two would write a whole mask-sized array)
            again.uncertain[result.uncertain] = True
            result = RefineResult(again.mask, stats, again.uncertain)
        if passes > 1:
            result.stats["voxels_changed"] = changed_voxels(mask, result.mask)
            result.stats["passes"] = passes
            result.stats["later_tta"] = later.tta
        return result

    def refine_seeded(self, image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float],
                      progress: Progress | None = None) -> RefineResult:
        """``refine`` as a click-made (seeded) mask is refined: in ``self.seeded``'s passes and orientations."""
        return self.refine(image, mask, spacing_zyx, progress, passes=self.seeded.count,
                           first_tta=self.seeded.first_tta, later_tta=self.seeded.later_tta)

    def with_tta(self, tta: int) -> "Refiner":
        """This Refiner predicting each patch in ``tta`` orientations: the same network, runtime, settings
        and kept boxes (a box's key holds the orientations, so the two never share a result)."""
        tta = check_tta(tta)
        if tta == self.tta:
            return self
        other = copy.copy(self)
        other.tta = tta
        return other

    def _refine_once(self, image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float],
                     progress: Progress | None) -> RefineResult:
        """One refinement pass of ``mask`` (see ``refine``)."""
        t0 = time.perf_counter()
        _check_inputs(image, mask, spacing_zyx)
        mask = np.asarray(mask).astype(bool, copy=False)
        if not mask.any():
            raise RefineError("The coarse mask is empty: nothing to refine. Check the mask and its tumour label.",
                              cli="The coarse mask is empty: nothing to refine. Check the mask file or --label.")
        check_not_whole_volume(mask)
        spacing = tuple(float(s) for s in spacing_zyx)
        boxes = lesion_boxes(mask, crop_margin(spacing, self.cfg))
        report(progress, 0.0, "Cutting boundary patches")
        refined = mask.copy()
        # np.zeros, not zeros_like: the kernel's zero pages stay unallocated outside the lesion boxes
        uncertain = np.zeros(mask.shape, dtype=bool)
        seconds = {"crop": 0.0, "sample": 0.0, "extract": 0.0, "infer": 0.0, "reassemble": 0.0}
        patches = changed = reused = patches_reused = 0
        lesions: list[dict[str, Any]] = []
        intensity: list[IntensityDecision] = []
        liver_hu = self._parenchyma(image, mask, boxes, spacing)
        for i, box in enumerate(boxes):
            key = self._box_key(image, mask, box, spacing, liver_hu)
            piece = self.boxes.get(key) if key is not None else None  # type: ignore[union-attr]
            if piece is None:
                piece = self._refine_box(image, mask, box, spacing, liver_hu, box_progress(progress, i, len(boxes)))
                patches += piece.patches
                patches_reused += piece.patches_reused
                for stage, value in piece.seconds.items():
                    seconds[stage] += value
                if key is not None:
                    self.boxes.put(key, piece, piece.mask.nbytes + piece.uncertain.nbytes)  # type: ignore[union-attr]
            else:
                reused += 1
            # counted on the crop: nothing outside it changes, and a full-volume comparison would
            # cost one more mask-sized temporary (1 GB at 1024x1024x1000)
            changed += int(np.count_nonzero(piece.mask != mask[box]))
            refined[box] = piece.mask
            uncertain[box] |= piece.uncertain
            for decision in piece.lesions:
                lesions.append({**decision.to_dict(), "lesion": len(lesions) + 1})
            intensity += piece.intensity
        seconds["total"] = time.perf_counter() - t0
        report(progress, 1.0, "Done")
        stats = {"patches": patches, "seconds": seconds, "voxels_changed": changed, "device": str(self.device),
                 "runtime": self.runtime.name,
                 "crop_shapes": [tuple(int(s.stop - s.start) for s in box) for box in boxes],
                 "tta": self.tta, "parenchyma_hu": liver_hu, "lesions": lesions, "boxes_reused": reused,
                 "patches_reused": patches_reused}
        if self.intensity_gate:
            stats["intensity_gate"] = gate_summary(intensity)
        return RefineResult(refined, stats, uncertain)

    def _box_key(self, image: np.ndarray, mask: np.ndarray, box: Box, spacing: tuple[float, ...],
                 liver_hu: float | None) -> tuple | None:
        """``box``'s key in the kept boxes, or None when none are kept: what its refinement depends
        on, the CT and mask crops by their digest, and the options a caller may change on a built
        Refiner (the runtime among them)."""
        if self.boxes is None:
            return None
        options = (self.runtime.name, self.tta, self.agreement, self.removal_agreement, self.min_kept, self.shrink)
        return (tuple((int(b.start), int(b.stop)) for b in box), digest(image[box], mask[box]), spacing,
                None if liver_hu is None else float(liver_hu), self.intensity_gate) + options

    def _parenchyma(self, image: np.ndarray, mask: np.ndarray, boxes: list[Box], spacing: tuple[float, ...]
                    ) -> float | None:
        """The liver parenchyma's HU around all the lesions (pooled over their boxes, so how the
        lesions are grouped into boxes does not change it), or None when neither the model's
        normalisation nor the intensity gate needs it."""
        if self.cfg.normalise != "liver" and not self.intensity_gate:
            return None
        with torch.inference_mode():
            values = [sampling.shell_values(self._crop_image(image, box), tensor_of(mask[box], self.device),
                                            spacing) for box in boxes]
            return sampling.parenchyma_from(torch.cat(values))

    def _crop_image(self, image: np.ndarray, box: Box) -> torch.Tensor:
        crop = tensor_of(image[box], self.device, np.float32)
        return sampling.clean_hu(crop, self.cfg.hu_window)

    def _refine_box(self, image: np.ndarray, mask: np.ndarray, box: Box, spacing: tuple[float, ...],
                    liver_hu: float | None, progress: Progress | None) -> "_BoxResult":
        """The refined mask inside ``box`` with what it cost and the gate's decisions."""
        t0 = time.perf_counter()
        seconds: dict[str, float] = {}
        with torch.inference_mode():
            crop_mask = tensor_of(mask[box], self.device)
            crop_image = sampling.normalised(self._crop_image(image, box), liver_hu, self.cfg)
            seconds["crop"] = time.perf_counter() - t0
            t = time.perf_counter()
            centres = sampling.place_centres(crop_mask, spacing, self.cfg)
            seconds["sample"] = time.perf_counter() - t
            canvas, seconds_run, patches_reused = self._run_batches(crop_image, crop_mask, centres, spacing, progress)
            seconds.update(seconds_run)
            t = time.perf_counter()
            editable = sampling.editable_band(crop_mask, spacing, self.cfg.band_mm)
            proposed, sure = canvas.proposal(crop_mask, editable)
            uncertain = canvas.disagreement(editable).cpu().numpy()
            wanted = proposed != crop_mask
            needed = torch.where(proposed, self.agreement, self.removal_agreement)  # joining / leaving the tumour
            gated = torch.where(wanted & (sure < needed), crop_mask, proposed)
            coarse_crop = mask[box]
            gated_np, intensity = gated.cpu().numpy(), []
            if self.intensity_gate:
                gated_np, intensity = intensity_gate(image[box], coarse_crop, gated_np, liver_hu, spacing)
            probability = canvas.mean().cpu().numpy() if self.shrink == "cap" else None
            refined_crop, decisions = lesion_gate(coarse_crop, gated_np, wanted.cpu().numpy(),
                                                  self.min_kept, box_origin(box), probability)
        seconds["reassemble"] += time.perf_counter() - t
        return _BoxResult(refined_crop, seconds, int(len(centres)), decisions, uncertain, intensity, patches_reused)

    def _run_batches(self, image: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, spacing: tuple[float, ...],
                     progress: Progress | None) -> tuple[Canvas, dict[str, float], int]:
        """Extract, infer and accumulate patches batch by batch; also returns how many patches'
        predictions came from the kept ones (``keep_boxes``). The cutting and pasting overlap
        the network only where it runs in its own thread pool (ONNX Runtime): beside PyTorch's
        CPU inference, two OpenMP teams fight over the cores (40% slower, measured)."""
        if self.runtime.name == "onnx":
            return self._run_overlapped(image, mask, centres, spacing, progress)
        return self._run_serial(image, mask, centres, spacing, progress)

    def _patches_per_batch(self) -> int:
        return max(1, self.batch_size // self.tta)  # batch_size counts network inputs: a patch is one per orientation

    def _run_overlapped(self, image: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, spacing: tuple[float, ...],
                        progress: Progress | None) -> tuple[Canvas, dict[str, float], int]:
        """A helper thread cuts the next batch and accumulates the last one while the network
        runs on this one (ONNX Runtime releases the GIL), so the cutting and pasting hide behind
        inference. ``seconds`` holds each stage's own time."""
        seconds = {"extract": 0.0, "infer": 0.0, "reassemble": 0.0}
        canvas = Canvas(mask.shape, self.device)
        if not len(centres):
            return canvas, seconds, 0
        batches = centres.split(self._patches_per_batch())
        reused = 0

        def cut(chunk: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():  # inference mode is per thread
                t = time.perf_counter()
                inputs = self._patches(image, mask, chunk, spacing)
                seconds["extract"] += time.perf_counter() - t
                return inputs

        def paste(logits: torch.Tensor, chunk: torch.Tensor) -> None:
            with torch.inference_mode():
                t = time.perf_counter()
                self._add_votes(canvas, logits, chunk, spacing)
                seconds["reassemble"] += time.perf_counter() - t

        helper = ThreadPoolExecutor(1, thread_name_prefix="refine-patches")
        try:
            upcoming, pasted, done = helper.submit(cut, batches[0]), None, 0
            for i, chunk in enumerate(batches):
                inputs = upcoming.result()
                if i + 1 < len(batches):
                    upcoming = helper.submit(cut, batches[i + 1])
                t = time.perf_counter()
                logits, hits = self._infer(inputs)
                seconds["infer"] += time.perf_counter() - t
                reused += hits
                if pasted is not None:
                    pasted.result()  # raises here if the last paste failed
                pasted = helper.submit(paste, logits, chunk)
                done += len(chunk)
                report(progress, 0.05 + 0.9 * done / len(centres), f"Refined {done}/{len(centres)} patches")
            pasted.result()
        finally:
            helper.shutdown(wait=True, cancel_futures=True)  # a cancel or error leaves no thread behind
        return canvas, seconds, reused

    def _run_serial(self, image: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, spacing: tuple[float, ...],
                    progress: Progress | None) -> tuple[Canvas, dict[str, float], int]:
        """One stage after another; on CUDA it halves the batch on out-of-memory and finally falls
        back to the CPU."""
        seconds = {"extract": 0.0, "infer": 0.0, "reassemble": 0.0}
        canvas = Canvas(mask.shape, self.device)
        start, batch, reused = 0, self._patches_per_batch(), 0
        while start < len(centres):
            part = centres[start:start + batch]
            try:
                t = time.perf_counter()
                inputs = self._patches(image, mask, part, spacing)
                t1 = time.perf_counter()
                logits, hits = self._infer(inputs)
                _sync(self.device)
                t2 = time.perf_counter()
                self._add_votes(canvas, logits, part, spacing)
                _sync(self.device)
            except torch.cuda.OutOfMemoryError:  # canvas.add is all-or-nothing, so a retry never double-counts
                image, mask, centres, canvas, batch = self._shrink_after_oom(image, mask, centres, canvas, batch)
                continue
            seconds["extract"] += t1 - t
            seconds["infer"] += t2 - t1
            seconds["reassemble"] += time.perf_counter() - t2
            start += len(part)
            reused += hits
            report(progress, 0.05 + 0.9 * start / len(centres), f"Refined {start}/{len(centres)} patches")
        return canvas, seconds, reused

    def _patches(self, image: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor,
                 spacing: tuple[float, ...]) -> torch.Tensor:
        """The patches at ``centres`` as the network takes them, in their own orientation: (N, C, P, P)."""
        return sampling.network_input(sampling.extract_patches(image, mask, centres, spacing, self.cfg), self.cfg)

    def _infer(self, patches: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The network's logits for ``patches`` (N, C, P, P) in every orientation, laid out as
        ``tta.augmented`` lays out its inputs ((tta * N, ...)), and how many patches' came from the
        kept predictions (``keep_boxes``); only the others go through the network."""
        if self.patches is None:
            return self.runtime(tta_module.augmented(patches, self.tta)), 0
        keys = [(digest(p.numpy()), self.tta, self.runtime.name) for p in patches]
        found = [self.patches.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            logits = self.runtime(tta_module.augmented(patches[missing], self.tta))
            per_patch = logits.view(self.tta, len(missing), *logits.shape[1:])
            for j, i in enumerate(missing):
                found[i] = per_patch[:, j].clone()
                self.patches.put(keys[i], found[i], found[i].numel() * found[i].element_size())
        logits = torch.stack(found, dim=1)  # type: ignore[arg-type]
        return logits.reshape(-1, *logits.shape[2:]), len(patches) - len(missing)

    def _add_votes(self, canvas: Canvas, logits: torch.Tensor, centres: torch.Tensor, spacing: tuple[float, ...]) -> None:
        """The network's ``logits`` for ``_infer(centres' patches)`` onto ``canvas``: each orientation's
        prediction is a vote at every voxel, added in one call so that it is all-or-nothing."""
        probs = tta_module.restored(logits, self.tta)
        canvas.add(probs.flatten(0, 1), centres.repeat(len(probs), 1), spacing, self.cfg)

    def _shrink_after_oom(self, image, mask, centres, canvas, batch):
        torch.cuda.empty_cache()
        if batch > 1:
            warnings.warn(f"CUDA out of memory: retrying with batch size {batch // 2}.")
            return image, mask, centres, canvas, batch // 2
        warnings.warn("CUDA out of memory even with batch size 1: continuing on the CPU.")
        self.device = torch.device("cpu")
        self.model = self.model.to(self.device)
        self.runtime = TorchRuntime(self.model, self.device)
        moved = Canvas(canvas.shape, self.device)
        moved.total, moved.count, moved.votes = canvas.total.cpu(), canvas.count.cpu(), canvas.votes.cpu()
        return image.cpu(), mask.cpu(), centres.cpu(), moved, self._patches_per_batch()


@dataclass
class _BoxResult:
    """One lesion group's refinement."""

    mask: np.ndarray
    seconds: dict[str, float]
    patches: int
    lesions: list
    uncertain: np.ndarray
    intensity: list[IntensityDecision]  # one per lesion the intensity gate looked at (none when it is off)
    patches_reused: int = 0  # patches whose prediction was kept from an earlier call (``keep_boxes``)


def check_tta(value: Any) -> int:
    """``value`` as a count of orientations (``tta.check_count``), or a RefineError saying why not."""
    try:
        return tta_module.check_count(value)
    except ValueError as exc:
        raise RefineError(f"{exc}.") from None


def check_pass_count(passes: Any) -> int:
    """``passes`` as a count of refinement passes (1 to ``MAX_PASSES``), or a RefineError saying why not."""
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or not 1 <= passes <= MAX_PASSES:
        raise RefineError(f"passes must be a whole number from 1 to {MAX_PASSES} (got {passes!r}).")
    return int(passes)


def check_passes(value: Any) -> Passes:
    """``value`` as a ``Passes`` whose count and orientations are in range, or a RefineError saying why not."""
    if not isinstance(value, Passes):
        raise RefineError(f"seeded must be a config.Passes (got {value!r}).")
    check_pass_count(value.count)
    for tta in (value.first_tta, value.later_tta):
        if tta is not None:
            check_tta(tta)
    return value


def check_gate(value: Any) -> bool:
    """``value`` as the intensity gate's setting, or a RefineError when it is not True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise RefineError(f"intensity_gate must be True or False (got {value!r}).")
    return bool(value)


def _check_inputs(image: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> None:
    if image.ndim != 3 or mask.ndim != 3:
        raise RefineError(f"Expected 3D image and mask, got {image.ndim}D and {mask.ndim}D arrays.")
    if image.shape != mask.shape:
        raise RefineError(f"Image {image.shape} and mask {mask.shape} are on different grids: resample the mask onto the CT.")
    if len(spacing_zyx) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_zyx):
        raise RefineError(f"Voxel spacing {tuple(spacing_zyx)} is invalid: it must be three positive numbers (mm).")


def tensor_of(array: np.ndarray, device: torch.device, dtype: type | None = None) -> torch.Tensor:
    """``array`` (as ``dtype``) as a tensor on ``device``, sharing its memory where numpy allows;
    a read-only array (the pipeline passes a read-only view of the coarse mask) is copied, since
    PyTorch cannot wrap one without a warning."""
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device)


def box_progress(progress: Progress | None, index: int, count: int) -> Progress | None:
    """``progress`` for lesion group ``index`` of ``count``: its own 0..1 mapped onto its share."""
    if count == 1:
        return progress
    return part(progress, index / count, (index + 1) / count, f"lesion group {index + 1}/{count}: ")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
