"""Model files: saving, SHA-256 checking and safe loading (``weights_only=True``, never pickle code).

A model file is a plain dict of tensors and primitives: format tag, patch and net configs,
state dict and free-form metadata. A ``<file>.sha256`` sidecar is written beside it; the shipped
default model's hash is also pinned here, so a swapped or truncated file is refused.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from LiverTumorRefineLib.volume.atomic import atomic_path, sha256_of, write_text
from LiverTumorRefineLib.config import NetConfig, PatchConfig
from LiverTumorRefineLib.errors import RefineError
from LiverTumorRefineLib.volume.io import readable_file
from LiverTumorRefineLib.refine.network import BRNet, build_model

FORMAT = "livertumorrefine-brnet/1"
MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
DEFAULT_MODEL = "brnet_default.pt"
# Hashes of the models shipped in Resources/Models (their model cards give the training runs).
SHIPPED_SHA256: dict[str, str] = {
    "brnet_default.pt": "1d5ea6e62fd3b0088b54ebd64519237fbb4385652d4973a7f3a57f87a9a655fd",
    "brnet_nomask.pt": "6e21b72b55b882a5a36434b7005a2c6889b3e104691158960a818e545cb3eea9",
    "segnet_default.pt": "d190a719f9026b5decbf12b52e048979c67500f4a3c1281c68e870cd5f87c73e",  # autoseg
    "clicknet_default.pt": "e8710f71380b6e458ee8e94dae7c147656fd87d555ff5dd4b78b5232a001d6b3",  # coarse.clicks
}


def default_weights_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model shipped with the extension."""
    return MODELS_DIR / name


def expected_sha256(path: Path) -> str | None:
    """The pinned hash for a shipped model (a file in the models folder that is not pinned has
    none), else the sidecar's, else None."""
    path = Path(path)
    if path.resolve().parent == MODELS_DIR:
        return SHIPPED_SHA256.get(path.name)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        words = sidecar.read_text(errors="replace").split()
        if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
            raise RefineError(f"The SHA-256 file {sidecar} is empty or malformed (64 hex digits expected): write it "
                              f"again (sha256sum {path.name} > {sidecar.name}) if you trust the model, or retrain it.")
        return words[0].lower()
    return None


def save_payload(path: str | os.PathLike, payload: dict[str, Any]) -> str:
    """Write a model payload (tensors and primitives only) atomically with a ``.sha256``
    sidecar; returns the hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
            torch.load(tmp, map_location="cpu", weights_only=True)  # verify what was written before the rename
        except Exception as exc:  # a full disk, or a payload that is not tensors and primitives
            raise RefineError(f"Writing {path} failed ({type(exc).__name__}: {str(exc)[:120]}): is the disk full? "
                              "Free some space or choose another folder; nothing was written.") from None
        digest = sha256_of(Path(tmp))
    write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
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


# Sane bounds of the architecture fields a model file stores, checked before anything is built
# (a hostile or damaged file must not divide by zero or allocate 20 GB). Fields not listed are
# not bounded here (their dataclass checks them); a field missing from a file takes its default.
# Kinds: ("int", lo, hi), ("number", lo, hi), ("bool",), ("ints", lo, hi) a list of ints each in
# lo..hi, ("offsets", max count, max |mm|), ("window", lo, hi) two numbers lo <= low < high <= hi.
PATCH_BOUNDS: dict[str, tuple[Any, ...]] = {
    "patch_mm": ("number", 4, 128), "patch_px": ("int", 16, 256), "nms_iou": ("number", 0, 1),
    "context_mm": ("offsets", 9, 20), "hu_window": ("window", -2000, 4000), "use_mask": ("bool",),
    "band_mm": ("number", 0, 30),
}
NET_BOUNDS: dict[str, tuple[Any, ...]] = {
    "base_channels": ("int", 1, 128), "depth": ("int", 1, 6), "path_blocks": ("ints", 0, 8), "mask_prior": ("bool",),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _within(bound: tuple[Any, ...], value: Any) -> str | None:
    """None when ``value`` satisfies ``bound``, else what was expected."""
    kind, *limits = bound
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    if kind == "int":
        lo, hi = limits
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return None if ok else f"a whole number from {lo} to {hi}"
    if kind == "number":
        lo, hi = limits
        return None if _is_number(value) and lo <= value <= hi else f"a number from {lo} to {hi}"
    if kind == "ints":
        lo, hi = limits
        ok = isinstance(value, (list, tuple)) and all(_within(("int", lo, hi), v) is None for v in value)
        return None if ok else f"a list of whole numbers from {lo} to {hi}"
    if kind == "offsets":
        count, reach = limits
        ok = (isinstance(value, (list, tuple)) and 1 <= len(value) <= count
              and all(_is_number(v) and abs(v) <= reach for v in value))
        return None if ok else f"1 to {count} offsets within +-{reach} mm"
    if kind == "window":
        lo, hi = limits
        ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
              and lo <= value[0] < value[1] <= hi)
        return None if ok else f"two numbers low < high within {lo}..{hi}"
    raise ValueError(f"unknown bound kind {kind!r}")  # a bug in a bounds table


def check_fields(path: str | os.PathLike, section: str, values: Any, bounds: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """``values`` (a config dict from a model file) if every field in ``bounds`` that it holds
    is within them; RefineError naming the first that is not. Unknown fields pass."""
    if not isinstance(values, dict):
        raise RefineError(f"Model weights {path} are malformed: '{section}' is missing or not a dict. "
                          "Use a model file written by this version's training.")
    for key, bound in bounds.items():
        if key in values:
            expected = _within(bound, values[key])
            if expected is not None:
                raise RefineError(f"Model weights {path} are malformed: {section}.{key} = {values[key]!r}, expected "
                                  f"{expected}. Use a model file written by this version's training.")
    return values


def check_architecture(payload: dict[str, Any], path: str | os.PathLike) -> tuple[PatchConfig, NetConfig]:
    """The patch and network configs of a refinement model payload, after checking that they are
    present and within ``PATCH_BOUNDS`` / ``NET_BOUNDS`` and consistent (``len(path_blocks) ==
    depth``, ``patch_px`` divisible by ``2**depth``); RefineError otherwise, before anything is built."""
    if not isinstance(payload.get("state_dict"), dict):
        raise RefineError(f"Model weights {path} are malformed: they hold no network weights (state_dict). "
                          "Use a model file written by this version's training.")
    patch = check_fields(path, "patch_config", payload.get("patch_config"), PATCH_BOUNDS)
    net = check_fields(path, "net_config", payload.get("net_config"), NET_BOUNDS)
    try:
        patch_config, net_config = PatchConfig.from_dict(patch), NetConfig.from_dict(net)
    except (TypeError, ValueError) as exc:
        raise RefineError(f"Model weights {path} are malformed ({exc}). Use a model file written by this version's "
                          "training.") from None
    if len(net_config.path_blocks) != net_config.depth:
        raise RefineError(f"Model weights {path} are malformed: {len(net_config.path_blocks)} path_blocks for depth "
                          f"{net_config.depth}. Use a model file written by this version's training.")
    if patch_config.patch_px % 2 ** net_config.depth:
        raise RefineError(f"Model weights {path} are malformed: patch_px {patch_config.patch_px} is not divisible by "
                          f"2**depth = {2 ** net_config.depth}. Use a model file written by this version's training.")
    return patch_config, net_config


def load_payload(path: str | os.PathLike, fmt: str, what: str = "LiverTumorRefine model",
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict in a model file of format ``fmt``, after checking its SHA-256 and loading it with
    ``weights_only=True``; RefineError on any problem."""
    path = Path(path)
    if not path.exists():
        if path.parent.resolve() == MODELS_DIR:
            message = f"Model weights not found: {path}. The extension's model files are missing: reinstall it"
            raise RefineError(message + ", or give a model file.", cli=message + ", or pass --weights MODEL.pt.")
        message = f"Model weights not found: {path}. Check the path"
        raise RefineError(message + ", or use the shipped model (weights=None).",
                          cli=message + ", or leave out --weights to use the shipped model.")
    readable_file(path, "Model weights")
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
    model = build_model(*check_architecture(payload, path))
    return with_state(model, payload, path)  # type: ignore[return-value]
