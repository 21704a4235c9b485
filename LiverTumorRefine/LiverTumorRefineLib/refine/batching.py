"""How many network inputs one call runs on the CPU: chosen from the CPU's cache, not fixed.

A call's working set is dominated by the network's largest layer (its input and output feature
maps). While that fits in the last-level cache the convolutions stream from cache; past it they
fall off (PyTorch fp32 on this project's 2-core CPU with a 32 MB cache: 955 inputs/s at 16, 945 at
32, 909 at 64, 717 at 128; the int8 ONNX export: 2246 at 32, 2177 at 64, 2107 at 128, 2021 at
256). ``cache_batch`` takes the most inputs, a power of two, whose largest layer fills at most
``CACHE_SHARE`` of that cache: 16 for PyTorch fp32 and 64 for the int8 export there, within 1% and
3% of the fastest size measured. Where the cache size cannot be read, the measured sizes are used.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

CACHE_SHARE = 0.5  # of the last-level cache one call's largest layer may fill
BATCH_RANGE = (8, 256)
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")  # Linux; elsewhere the measured defaults apply
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def last_level_cache_bytes(root: Path = CPU_CACHES) -> int | None:
    """The size of the CPU's largest cache in bytes, or None where it cannot be read."""
    sizes = []
    for entry in root.glob("index*/size"):
        try:
            match = re.fullmatch(r"(\d+)\s*([KMG]?)B?", entry.read_text().strip().upper())
        except OSError:
            continue
        if match:
            sizes.append(int(match[1]) * _UNITS[match[2]])
    return max(sizes) if sizes else None


def input_px(model: torch.nn.Module) -> int | None:
    """The side, in pixels, of one square network input of ``model``: a boundary refiner's patch
    (its ``patch_config``) or a click model's crop (its ``click_config``); None for other models."""
    for config, field in (("patch_config", "patch_px"), ("click_config", "crop_px")):
        cfg = getattr(model, config, None)
        if cfg is not None:
            return int(getattr(cfg, field))
    return None


def largest_layer_elements(model: torch.nn.Module) -> int | None:
    """Elements of the largest convolution's input plus output for one network input of ``model``
    (a model whose input size ``input_px`` knows), from one forward pass; None for other models."""
    side = input_px(model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if side is None or not convs:
        return None
    sizes: list[int] = []
    hooks = [conv.register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].numel() + output.numel()))
             for conv in convs]
    try:
        probe = torch.zeros(1, convs[0].in_channels, side, side, device=next(model.parameters()).device)
        with torch.inference_mode():
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def cache_batch(bytes_per_input: int | None, default: int, cache: int | None = None) -> int:
    """Network inputs per call: the most, a power of two within ``BATCH_RANGE``, whose largest
    layer (``bytes_per_input`` each) fills at most ``CACHE_SHARE`` of the last-level cache
    (``cache`` bytes; None: this CPU's); ``default`` when either size is unknown."""
    cache = last_level_cache_bytes() if cache is None else cache
    if not bytes_per_input or not cache:
        return default
    fits = max(int(CACHE_SHARE * cache // bytes_per_input), 1)
    return min(max(1 << (fits.bit_length() - 1), BATCH_RANGE[0]), BATCH_RANGE[1])


def is_int8_export(path: str | Path) -> bool:
    """Whether an ONNX file is a quantised (int8) export: its graph holds QuantizeLinear nodes,
    whose operator name the file stores as text."""
    return b"QuantizeLinear" in Path(path).read_bytes()
