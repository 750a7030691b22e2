"""Where models run and in which precision: one policy for every model naturelens loads.

Vision backbones, CLIP/SigLIP text towers, local VLMs, causal LMs, text encoders and the
tagger all ask :func:`pick_device` for a device and :func:`pick_dtype` for a weights type,
so that ``--device`` and ``--precision`` mean the same thing everywhere.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from naturelens.errors import NaturelensError

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that need it: checking a --precision value (as every
# method's parameters are checked) must not cost a command torch's start-up.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Cards and older options spell types as torch does.
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class DeviceError(NaturelensError, ValueError):
    """A device or precision that this machine cannot provide."""


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested`` when this machine has it, else the best available: cuda, mps, cpu.

    Raises
    ------
    DeviceError
        For an unknown device name or one this machine lacks.
    """
    import torch

    if isinstance(requested, torch.device):
        return requested
    if requested:
        try:
            dev = torch.device(requested)
        except RuntimeError as exc:
            raise DeviceError(
                f"unknown device {requested!r}", hint="use cpu, cuda, cuda:1 or mps"
            ) from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"--device {requested}: no CUDA GPU is available here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise DeviceError(f"--device {requested}: Apple's Metal backend is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(precision: str | None, device: torch.device | str, card: Any = None) -> torch.dtype:
    """The weights type for ``precision`` on ``device``.

    Parameters
    ----------
    precision
        ``auto`` (or None), ``fp32``, ``bf16`` or ``fp16`` (``float32``, ``bfloat16`` and
        ``float16`` are read the same way).
    device
        Where the model runs.
    card
        The model's card; with ``auto`` on a GPU its ``dtype`` field, when set, wins.

    Returns
    -------
    torch.dtype
        With ``auto``: bf16 on GPUs that run it (else fp16) and on CPUs with bf16 units;
        fp32 on other CPUs and on mps, where it is the safe and the faster choice.
    """
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    name = _ALIASES.get(precision or "auto", precision or "auto")
    if name not in PRECISIONS:
        raise DeviceError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if name != "auto":
        return dtypes[name]
    dev = torch.device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        wanted = _ALIASES.get(str(getattr(card, "dtype", None) or ""), "")
        if wanted in dtypes:
            return dtypes[wanted]
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


__all__ = ["PRECISIONS", "DeviceError", "cpu_supports_bf16", "pick_device", "pick_dtype"]
