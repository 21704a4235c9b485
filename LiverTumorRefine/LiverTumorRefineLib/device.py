"""The one device policy: which device a name means, and falling back to the CPU when a GPU
runs out of memory. torch is imported only where a device is really resolved."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, TypeVar

from LiverTumorRefineLib.errors import RefineError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICES = ("auto", "cpu", "cuda")
GPU_OOM_NOTE = ("The GPU ran out of memory; the {step} ran on the CPU instead (slower). Close other GPU programs or "
                "choose CPU to skip the GPU attempt.")
T = TypeVar("T")


def check_device(device: str) -> str:
    """The canonical name ("auto", "cpu" or "cuda"; "gpu" means "cuda") of a device choice.
    Asking for CUDA where PyTorch sees none is a user error; without PyTorch installed the name is
    only checked (the missing PyTorch is reported, with its install hint, where it is needed)."""
    name = {"gpu": "cuda"}.get(str(device).lower(), str(device).lower())
    if name not in DEVICES:
        raise RefineError(f"Unknown device {device!r}: choose auto, cpu or cuda (GPU).")
    if name == "cuda":
        try:
            import torch
        except ImportError:
            return name
        if not torch.cuda.is_available():
            raise RefineError("A GPU (cuda) was asked for but PyTorch sees no CUDA GPU on this computer: choose auto or cpu.")
    return name


def resolve_device(device: str) -> "torch.device":
    """The torch device for a choice: "auto" takes CUDA when present."""
    import torch

    name = check_device(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def is_cuda_oom(exc: BaseException) -> bool:
    """True for PyTorch's CUDA out-of-memory error (its class or its message)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "cuda" in str(exc).lower()


def with_cpu_fallback(run: Callable[[str], T], device: str, step: str, notes: list[str]) -> T:
    """``run(device)``; if the GPU runs out of memory, ``run("cpu")`` with a note saying so.
    Errors other than CUDA out-of-memory, and any error on the CPU, propagate."""
    try:
        return run(device)
    except RefineError:
        raise
    except Exception as exc:  # noqa: BLE001 - only CUDA out-of-memory is handled, the rest is re-raised
        if device == "cpu" or not is_cuda_oom(exc):
            raise
        logging.warning("LiverTumorRefine: CUDA out of memory in the %s (%s); retrying on the CPU", step, exc)
        notes.append(GPU_OOM_NOTE.format(step=step))
        return run("cpu")
