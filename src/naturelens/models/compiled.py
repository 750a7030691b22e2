"""Compiled embedding on a CPU: ``torch.compile`` with frozen weights, where it pays.

Measured on 2 cores with bf16 matrix units (AMX), DINOv2-small embedded 98-112 photos/s
compiled with frozen weights against 83 in eager mode: inductor folds the weights into
oneDNN's packed matrix products and fuses the bias, GELU and layer-scale work into them.
Compiling without freezing gained nothing. Compiling costs 15-20 s in every new process,
and the gain differs by model and CPU, so it is decided by measurement:

- ``compile="auto"`` (on a CPU): the first job expected to run for
  :data:`MIN_JOB_SECONDS` or more in eager mode compiles, times compiled against eager
  embedding on a sample and checks that their embeddings agree; the rates and the compile
  time are cached per model, precision and machine. Later jobs compile only when the
  time they are predicted to save exceeds the compile time. A model that fails to compile
  (no C++ compiler, an operator inductor cannot lower) runs eagerly, and the failure is
  cached so it is not paid again.
- ``compile="on"`` compiles whatever the job (and fails loudly if it cannot);
  ``"off"`` never compiles.

The compiled model always sees the same batch shape (the last batch of a job is padded
with blank photos whose embeddings are dropped), so it compiles once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from naturelens.machine_cache import cache_dir, read_entries, write_entry
from naturelens.models.precision import (
    MARGIN,
    MIN_COSINE,
    best_rates,
    lowest_cosine,
    machine_key,
    sample_pixels,
)
from naturelens.models.specs import BackboneError

if TYPE_CHECKING:
    from naturelens.models.backbones import Backbone

COMPILE_MODES = ("auto", "on", "off")
# A job shorter than this in eager mode is not worth a first, measured compile.
MIN_JOB_SECONDS = 300.0
CACHE_FILE = "compile.json"


@dataclass
class CompileChoice:
    """Whether a job's embeddings are computed by the compiled model, and why.

    Attributes
    ----------
    compiled
        True when the job runs compiled.
    how
        ``forced`` (asked for), ``measured`` (timed now), ``cached`` (timed before on this
        machine) or ``skipped`` (not measured: see ``reason``).
    reason
        Why, in a few words.
    eager_photos_per_s, compiled_photos_per_s
        The measured rates (0 when there was no measurement).
    compile_s
        Seconds compiling took in this process (when measured or compiled now).
    agreement
        Lowest cosine similarity between compiled and eager embeddings of the sample.
    """

    compiled: bool
    how: str
    reason: str
    eager_photos_per_s: float = 0.0
    compiled_photos_per_s: float = 0.0
    compile_s: float = 0.0
    agreement: float = 1.0

    @classmethod
    def from_cache(cls, found: object) -> CompileChoice | None:
        """A remembered measurement; None when missing or damaged (measured again)."""
        if not isinstance(found, dict):
            return None
        try:
            choice = cls(**{k: found[k] for k in cls.__dataclass_fields__ if k in found})
        except TypeError:
            return None
        rates = (choice.eager_photos_per_s, choice.compiled_photos_per_s)
        if choice.compiled and not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            return None
        return choice

    def describe(self) -> str:
        """One line for the user."""
        state = "compiled" if self.compiled else "not compiled"
        return f"{state} ({self.reason})"


class CompiledEmbedder:
    """``backbone.embed`` through ``torch.compile``, always on batches of ``chunk`` photos."""

    def __init__(self, backbone: Backbone, chunk: int):
        from torch._inductor import config

        self.backbone = backbone
        self.chunk = chunk
        self.inductor = config
        self.compiled = torch.compile(backbone.features, dynamic=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings of up to ``chunk`` normalised inputs, by the compiled model."""
        n = len(x)
        if n < self.chunk:  # blank photos make up the shape; their rows are dropped
            x = torch.cat([x, x.new_zeros((self.chunk - n, *x.shape[1:]))])
        # Freezing is read when the graph is compiled (the first call); passed as a
        # torch.compile option it is not (measured: 77 photos/s against 100).
        with self.inductor.patch(freezing=True):
            return self.compiled(x)[:n]

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """float32 embeddings (B, dim) of uint8 pixels (B, H, W, 3), like ``Backbone.embed``."""
        return self.backbone.embed(pixels, self.features, self.chunk)


def check_mode(mode: str) -> None:
    """Reject a ``compile`` value other than auto, on and off."""
    if mode not in COMPILE_MODES:
        raise BackboneError(f"compile must be one of {COMPILE_MODES}, not {mode!r}")


def compiled_chunk(backbone: Backbone, batch_size: int) -> int:
    """Photos per compiled forward pass. On 2 cores DINOv2-small compiled ran 98 photos/s
    in passes of 8, 102 of 16, 110 of 32 and 83 of 64: larger than eager's best, since the
    fused kernels keep less in memory between layers."""
    return max(1, min(batch_size, 16 * torch.get_num_threads()))


def compile_for_job(
    backbone: Backbone,
    photos: int,
    batch_size: int,
    mode: str = "auto",
    cache: Path | None = None,
) -> tuple[Callable[[np.ndarray], np.ndarray], CompileChoice]:
    """How a job of ``photos`` photos should embed: eager or compiled, and why.

    Returns
    -------
    (embed, choice)
        ``embed(pixels)`` -> embeddings, and the :class:`CompileChoice` behind it.
    """
    check_mode(mode)
    if mode == "off":
        return backbone.embed, CompileChoice(False, "forced", "as asked")
    chunk = compiled_chunk(backbone, batch_size)
    if mode == "on":
        compiled, choice = _measure(backbone, chunk)
        if compiled is None:
            raise BackboneError(
                f"{backbone.card.name} could not be compiled ({choice.reason}); "
                "embed with --compile off"
            )
        if choice.agreement < MIN_COSINE:
            raise BackboneError(
                f"{backbone.card.name} compiled {choice.reason}; embed with --compile off"
            )
        reason = f"as asked; measured now: {choice.reason}"
        return compiled.embed, replace(choice, compiled=True, how="forced", reason=reason)
    if backbone.device.type != "cpu":
        return backbone.embed, CompileChoice(False, "skipped", "auto compiles on CPUs only")
    path = cache or cache_dir() / CACHE_FILE
    key = _cache_key(backbone, chunk)
    before = CompileChoice.from_cache(read_entries(path).get(key))
    if before is not None:
        return _from_cache(backbone, chunk, photos, before)
    # The precision measurement's rate, when there was one, saves timing a sample now.
    eager = max(backbone.precision.photos_per_s.values(), default=0.0)
    if eager <= 0:
        eager = _rate(backbone.embed, _sample(backbone, chunk))
    if photos / eager < MIN_JOB_SECONDS:
        why = (
            f"about {max(1, round(photos / eager))} s of work; whether compiling pays is "
            f"measured on a job of {MIN_JOB_SECONDS:.0f} s or more"
        )
        return backbone.embed, CompileChoice(False, "skipped", why, eager)
    compiled, choice = _measure(backbone, chunk)
    write_entry(path, key, asdict(choice), keep=64)
    told = replace(choice, reason=f"measured now: {choice.reason}")
    if compiled is None or not choice.compiled:
        return backbone.embed, told
    return compiled.embed, told


def _from_cache(
    backbone: Backbone, chunk: int, photos: int, before: CompileChoice
) -> tuple[Callable[[np.ndarray], np.ndarray], CompileChoice]:
    if not before.compiled:
        return backbone.embed, CompileChoice(
            False, "cached", f"measured before on this machine: {before.reason}"
        )
    saving = photos / before.eager_photos_per_s - photos / before.compiled_photos_per_s
    rates = before.reason
    if saving <= before.compile_s:
        why = f"it would save {saving:.0f} s on {photos} photos; measured before: {rates}"
        return backbone.embed, CompileChoice(False, "cached", why)
    try:
        compiled, compile_s, agree = _compile(backbone, chunk, _sample(backbone, chunk))
    except Exception as exc:  # the compiler's failures are many and not ours: run eagerly
        return backbone.embed, CompileChoice(False, "cached", f"compiling failed: {_line(exc)}")
    if agree < MIN_COSINE:
        why = f"compiled embeddings disagree with eager ones (cosine {agree:.4f})"
        return backbone.embed, CompileChoice(False, "cached", why)
    why = f"saves about {saving:.0f} s on {photos} photos; measured before: {rates}"
    return compiled.embed, CompileChoice(
        True,
        "cached",
        why,
        before.eager_photos_per_s,
        before.compiled_photos_per_s,
        compile_s,
        agree,
    )


def _measure(backbone: Backbone, chunk: int) -> tuple[CompiledEmbedder | None, CompileChoice]:
    """Compile, then time compiled against eager on a sample in interleaved rounds."""
    sample = _sample(backbone, chunk)
    try:
        compiled, compile_s, agree = _compile(backbone, chunk, sample)
    except Exception as exc:  # the compiler's failures are many and not ours: run eagerly
        return None, CompileChoice(False, "measured", f"compiling failed: {_line(exc)}")
    if agree < MIN_COSINE:
        why = f"disagrees with eager embedding (cosine {agree:.4f})"
        return compiled, CompileChoice(False, "measured", why, 0, 0, compile_s, agree)
    runs = {"eager": lambda: backbone.embed(sample), "compiled": lambda: compiled.embed(sample)}
    rates = best_rates(runs, len(sample), backbone.device)
    eager, fast = rates["eager"], rates["compiled"]
    faster = fast > MARGIN * eager
    why = f"{fast:.1f} photos/s compiled, {eager:.1f} eager, {compile_s:.0f} s to compile"
    if not faster:
        why += "; not faster enough to keep"
    return compiled, CompileChoice(faster, "measured", why, eager, fast, compile_s, agree)


def _compile(
    backbone: Backbone, chunk: int, sample: np.ndarray
) -> tuple[CompiledEmbedder, float, float]:
    """Compile on ``sample``: the compiled model, the seconds it took, and the lowest cosine
    similarity of its embeddings to eager ones."""
    started = time.perf_counter()
    compiled = CompiledEmbedder(backbone, chunk)
    first = compiled.embed(sample)  # compiles
    compile_s = time.perf_counter() - started
    return compiled, compile_s, lowest_cosine(first, backbone.embed(sample))


def _cache_key(backbone: Backbone, chunk: int) -> str:
    choice = backbone.precision
    layout = "cl" if choice.channels_last else ""
    return "|".join(
        [
            backbone.card.name,
            str(backbone.card.source),
            backbone.pooling,
            choice.precision,
            layout,
            choice.attention,
            f"chunk{chunk}",
            machine_key(backbone.device),
        ]
    )


def _sample(backbone: Backbone, photos: int) -> np.ndarray:
    """Photo-like uint8 pixels (photos, H, W, 3) at the model's input size."""
    values = sample_pixels(backbone.preprocessing.input_size, photos)
    return (values * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _rate(embed: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    embed(x[:1])  # warm-up
    started = time.perf_counter()
    embed(x)
    return len(x) / (time.perf_counter() - started)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:200]
