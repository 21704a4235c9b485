"""Model files: saving, SHA-256 checking and safe loading (``weights_only=True``, never pickle code).

A model file is a plain dict of tensors and primitives: format tag, patch and net configs,
state dict and free-form metadata. A ``<file>.sha256`` sidecar is written beside it; the shipped
default model's hash is also pinned here, so a swapped or truncated file is refused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .config import NetConfig, PatchConfig
from .errors import RefineError
from .network import BRNet, build_model

FORMAT = "livertumorrefine-brnet/1"
MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
DEFAULT_MODEL = "brnet_default.pt"
# Hashes of the models shipped in Resources/Models (their model cards give the training runs).
SHIPPED_SHA256: dict[str, str] = {
    "brnet_default.pt": "ea8e8c0b901c6cd18c7835b412739c6560c16490d95147e18080558048185cb8",
    "brnet_nomask.pt": "6e21b72b55b882a5a36434b7005a2c6889b3e104691158960a818e545cb3eea9",
    "segnet_default.pt": "a00b89546855d62918edd5d8b047d02d633de1389bff8b86c659bac4015ce6a8",  # autoseg
}


def default_weights_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model shipped with the extension."""
    return MODELS_DIR / name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(path: Path) -> str | None:
    """The pinned hash for a shipped model (a file in the models folder that is not pinned has
    none), else the sidecar's, else None."""
    path = Path(path)
    if path.resolve().parent == MODELS_DIR:
        return SHIPPED_SHA256.get(path.name)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        return sidecar.read_text().split()[0].strip()
    return None


def save_payload(path: str | os.PathLike, payload: dict[str, Any]) -> str:
    """Write a model payload (tensors and primitives only) atomically with a ``.sha256``
    sidecar; returns the hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    digest = sha256_of(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def save_network(model: torch.nn.Module, path: str | os.PathLike, fmt: str, configs: dict[str, dict[str, Any]],
                 meta: dict[str, Any] | None = None) -> str:
    """Write a network of format ``fmt``: its configs (name -> plain dict), weights and metadata."""
    return save_payload(path, {"format": fmt, **configs,
                               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                               "meta": meta or {}})


def with_state(model: torch.nn.Module, payload: dict[str, Any], path: str | os.PathLike) -> torch.nn.Module:
    """``model`` with the payload's weights and metadata, in eval mode; RefineError when the
    weights belong to another architecture."""
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise RefineError(f"Model weights {path} were made for another network architecture: "
                          "use weights trained with this version.") from None
    model.meta = payload.get("meta", {})  # type: ignore[attr-defined]
    return model.eval()


def save_model(model: BRNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """Write ``model`` atomically with its configs and a ``.sha256`` sidecar; returns the hash."""
    return save_network(model, path, FORMAT, {"patch_config": model.patch_config.to_dict(),  # type: ignore[attr-defined]
                                              "net_config": model.net_config.to_dict()}, meta)  # type: ignore[attr-defined]


def load_payload(path: str | os.PathLike, fmt: str, what: str = "LiverTumorRefine model",
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict in a model file of format ``fmt``, after checking its SHA-256 and loading it with
    ``weights_only=True``; RefineError on any problem."""
    path = Path(path)
    if not path.is_file():
        hint = " Reinstall the extension or pass --weights." if path.parent.resolve() == MODELS_DIR else ""
        raise RefineError(f"Model weights not found: {path}.{hint}")
    expected = expected_sha256(path)
    if expected is None:
        raise RefineError(f"Model weights {path} have no SHA-256 to check against: keep the {path.name}.sha256 "
                          "file that training wrote beside it (or create one with sha256sum if you trust the file).")
    if sha256_of(path) != expected:
        raise RefineError(f"Model weights {path} fail the SHA-256 check (corrupted or replaced): "
                          "restore the original file or retrain it.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or contains pickled code
        raise RefineError(f"Cannot read model weights {path} ({type(exc).__name__}): "
                          "the file is truncated or not a LiverTumorRefine model.") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise RefineError(f"{path} is not a {what} file (format {fmt} expected).")
    return payload


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> BRNet:
    """Load a BRNet from ``path`` after checking its SHA-256; RefineError on any problem."""
    payload = load_payload(path, FORMAT, map_location=map_location)
    model = build_model(PatchConfig.from_dict(payload["patch_config"]), NetConfig.from_dict(payload["net_config"]))
    return with_state(model, payload, path)  # type: ignore[return-value]
