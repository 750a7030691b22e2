"""``precision=auto`` by measurement: the faster precision that agrees with fp32, per machine.

Whether bf16 pays depends on the architecture and on the CPU, not on a flag alone: on
CPUs with bf16 units the ViTs run about 3x faster in bf16, while a depthwise-convolution
CNN (EfficientNet-Lite0) can run 6-13x *slower* in bf16 than in fp32 on a CPU without them.
So at the first use of a model card on a CPU, a small batch is timed in each candidate
precision (and, for convolutional models, in each layout: channels-last or not; for
transformers, with each attention implementation, since which is faster also differs by
CPU and precision), in interleaved rounds so that a busy machine slows every candidate
alike; the fastest one whose embeddings agree with fp32 (cosine similarity) is kept if it
beats fp32 by 10 %, since a wrong switch costs far more than a missed one. The decision is
cached per card, device and machine in a small JSON file
(``$NATURELENS_CACHE`` or ``~/.cache/naturelens``, file ``precision.json``), so the
measurement is paid once. ``--precision`` still forces one. On GPUs and mps the device
policy (:func:`naturelens.models.device.pick_dtype`) decides, unmeasured.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from naturelens.machine_cache import cache_dir, read_entries, write_entry

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Embeddings in a candidate precision must agree this well with fp32 (every photo of the
# sample). bf16 ViTs give about 0.9999; a broken half-precision path gives far less.
MIN_COSINE = 0.995
# A candidate this much slower than the fastest so far is dropped without more rounds.
GIVE_UP_SLOWER = 2.0
SAMPLE_PHOTOS = 4
ROUNDS = 3
# Leave the default (fp32, default layout) only for a candidate this much faster.
MARGIN = 1.1
CACHE_FILE = "precision.json"
# Environment variables that cap the instruction sets oneDNN, MKL and torch's own kernels
# use (a machine key includes them).
ISA_LIMITS = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "ATEN_CPU_CAPABILITY",
)
# How the attention implementations are named to users.
ATTENTION_NAMES = {"sdpa": "torch sdpa", "naturelens_cpu": "plain"}


@dataclass
class PrecisionChoice:
    """The precision a model runs in, and why.

    Attributes
    ----------
    precision
        ``fp32``, ``bf16`` or ``fp16``.
    how
        ``forced`` (asked for), ``measured`` (timed now), ``cached`` (timed before on
        this machine) or ``policy`` (a GPU or mps: the device policy's choice).
    photos_per_s
        Measured throughput per candidate (one dropped early: from its first photo).
    cosine
        Lowest cosine similarity to fp32 over the sample, per candidate.
    channels_last
        Whether a convolutional model runs with channels-last weights and inputs (timed
        against the default layout in the chosen precision; ``precision=auto`` only).
    attention
        The transformers attention implementation a model with attention runs with
        (timed against each other; ``precision=auto`` only); empty: the one it loads with.
    """

    precision: str
    how: str
    photos_per_s: dict[str, float] = field(default_factory=dict)
    cosine: dict[str, float] = field(default_factory=dict)
    channels_last: bool = False
    attention: str = ""

    def describe(self) -> str:
        """One line for the user: which precision runs and why."""
        if self.how == "forced":
            return f"{self.precision} (as asked)"
        if self.how == "policy":
            return f"{self.precision} (auto: the device's policy, not measured)"
        rates = ", ".join(f"{p} {r:.1f} photos/s" for p, r in self.photos_per_s.items())
        rejected = [
            f"{p} disagrees with fp32 (cosine {c:.4f})"
            for p, c in self.cosine.items()
            if c < MIN_COSINE
        ]
        why = f"fastest that agrees with fp32: {rates}"
        if rejected:
            why += "; " + "; ".join(rejected)
        when = "measured now" if self.how == "measured" else "measured before on this machine"
        layout = ", channels-last" if self.channels_last else ""
        if self.attention:
            layout += f", {ATTENTION_NAMES.get(self.attention, self.attention)} attention"
        return f"{self.precision}{layout} (auto, {when}; {why})"


def candidates(device: torch.device) -> list[str]:
    """Precisions worth timing on ``device``; fp32 first, as the reference."""
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    if device.type == "mps":
        return ["fp32", "fp16"]
    return ["fp32", "bf16"]


def machine_key(device: torch.device) -> str:
    """What makes timings of one machine differ from another's: processor, threads, torch."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = _cpu_identity()
    parts = [device.type, hardware, str(torch.get_num_threads()), torch.__version__]
    # Caps on the instruction sets the math libraries use change their speed too.
    parts += [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cpu_identity() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return model + " " + " ".join(sorted(flags))


def _write_cache(path: Path, key: str, choice: PrecisionChoice) -> None:
    write_entry(path, key, asdict(choice) | {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def sample_pixels(size: int, photos: int = SAMPLE_PHOTOS, seed: int = 0) -> torch.Tensor:
    """Photo-like values in [0, 1] (photos, 3, size, size): smooth colour fields with some
    texture."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((photos, 3, 8, 8), generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    x = x + 0.05 * torch.randn((photos, 3, size, size), generator=gen)
    return x.clamp(0, 1)


def sample_input(size: int, photos: int = SAMPLE_PHOTOS, seed: int = 0) -> torch.Tensor:
    """:func:`sample_pixels` normalised like a model's input."""
    return (sample_pixels(size, photos, seed) - 0.5) / 0.25


def lowest_cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The lowest cosine similarity between matching rows of two sets of embeddings."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).min())


def _seconds(run: Callable[[], torch.Tensor], device: torch.device) -> float:
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def best_rates(
    runs: dict[str, Callable[[], object]], photos: int, device: torch.device
) -> dict[str, float]:
    """Photos per second of each run, each its best of :data:`ROUNDS` interleaved rounds,
    so that a busy moment slows every run alike instead of making one look slow."""
    rates = dict.fromkeys(runs, 0.0)
    for _ in range(ROUNDS):
        for name, run in runs.items():
            rates[name] = max(rates[name], photos / _seconds(run, device))
    return rates


@torch.inference_mode()
def measure(
    module: torch.nn.Module,
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    input_size: int,
    device: torch.device,
    options: list[str] | None = None,
    layouts: bool = False,
    attentions: Sequence[str] = (),
    set_attention: Callable[[torch.nn.Module, str], None] | None = None,
) -> PrecisionChoice:
    """Time ``forward`` on a small batch in each precision; keep the fastest that agrees.

    Candidates are timed in interleaved rounds and each keeps its best round, so that
    another process taking the cores for a while slows every candidate alike instead of
    making one look slow; and a candidate replaces the default (fp32, the default layout)
    only when it is faster by :data:`MARGIN`, since a wrong switch can cost far more (bf16
    emulated on a CPU without bf16 units runs many times slower) than a missed one.

    Parameters
    ----------
    module
        The model in fp32; it is left untouched (each candidate runs on a copy).
    forward
        ``forward(module, x)`` -> embeddings (photos, dim).
    input_size
        Side of the model's square input.
    layouts
        Also time each precision with channels-last weights and inputs (for
        convolutional models, whose kernels often run faster in that layout).
    attentions
        The attention implementations to time, the one ``module`` runs with first (for
        models with attention); ``set_attention(copy, name)`` switches a copy to another.
    """
    x = sample_input(input_size).to(device)
    reference = forward(module, x).float()
    rates: dict[str, float] = {}
    cosine: dict[str, float] = {}
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    fastest = float("inf")  # the fastest one-photo estimate of a kept candidate
    precisions = list(options or candidates(device))
    names = list(precisions)
    if layouts:
        names += [f"{n}+channels_last" for n in precisions]
    if set_attention is not None:
        names += [f"{n}+{a}" for a in attentions[1:] for n in precisions]
    for name in names:
        precision, _, variant = name.partition("+")
        model = module if name == "fp32" else copy.deepcopy(module).to(DTYPES[precision])
        xin = x.to(DTYPES[precision])
        if variant == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            xin = xin.contiguous(memory_format=torch.channels_last)
        elif variant:
            set_attention(model, variant)
        # One photo first: a candidate many times slower (bf16 emulated on a CPU without
        # bf16 units) is dropped after one photo, not a whole batch. The first call also
        # warms up (kernel choice), hence twice the margin.
        one = _seconds(lambda m=model, xi=xin: forward(m, xi[:1]), device) * len(x)
        # The agreement check on every photo of the sample (fp32 is the reference).
        cosine[name] = 1.0 if name == "fp32" else lowest_cosine(forward(model, xin), reference)
        rates[name] = len(x) / one
        if cosine[name] >= MIN_COSINE and one <= 2 * GIVE_UP_SLOWER * fastest:
            runs[name] = lambda m=model, xi=xin: forward(m, xi)
            fastest = min(fastest, one)
        del model
    rates.update(best_rates(runs, len(x), device))
    default = names[0]
    clearly_faster = [n for n in runs if rates[n] > MARGIN * rates[default]]
    best = max(clearly_faster, key=rates.__getitem__, default=default)
    precision, _, variant = best.partition("+")
    attention = ""
    if attentions:
        attention = variant if variant and variant != "channels_last" else attentions[0]
    return PrecisionChoice(
        precision, "measured", rates, cosine, variant == "channels_last", attention
    )


@torch.inference_mode()
def measure_pair(
    fp32: Callable[[], torch.Tensor],
    bf16: Callable[[], torch.Tensor],
    device: torch.device,
    photos: int = 1,
) -> PrecisionChoice:
    """fp32 against bf16 for a model whose copies the caller holds (vision-language models).

    ``fp32()`` and ``bf16()`` run the model's fp32 and bf16 copy on the same fixed sample
    of ``photos`` photos and return its outputs (one row per photo). bf16 is kept when its
    rows agree with fp32's (cosine) and it runs :data:`MARGIN` faster, timed in
    interleaved rounds.
    """
    reference = fp32().float()  # also the warm-up
    first = _seconds(bf16, device)  # bf16's warm-up, and its estimate if it is dropped
    got = bf16().float()
    width = reference.shape[-1]
    agree = lowest_cosine(got.reshape(-1, width), reference.reshape(-1, width))
    cosine = {"fp32": 1.0, "bf16": agree}
    rates = {"fp32": 0.0, "bf16": photos / first}  # bf16's: replaced by its rounds' if kept
    runs = {"fp32": fp32}
    if agree >= MIN_COSINE and first <= 2 * GIVE_UP_SLOWER * _seconds(fp32, device):
        runs["bf16"] = bf16
    rates.update(best_rates(runs, photos, device))
    faster = "bf16" in runs and rates["bf16"] > MARGIN * rates["fp32"]
    return PrecisionChoice("bf16" if faster else "fp32", "measured", rates, cosine)


def measure_copies(
    model: torch.nn.Module,
    run: Callable[[torch.nn.Module, str], torch.Tensor],
    device: torch.device,
    identity: str,
    photos: int = 1,
) -> tuple[PrecisionChoice, torch.nn.Module | None]:
    """fp32 against bf16 for a loaded language model, on copies of it (see :func:`measure_pair`).

    ``run(copy, name)`` runs the copy in precision ``name`` on the same fixed sample of
    ``photos`` photos. The decision is remembered for ``identity`` on this machine.
    Holding both copies needs memory: when that would take more than half of what is
    free, nothing is measured or remembered and the model stays as loaded (``how`` is
    ``policy``).

    Returns
    -------
    (choice, model)
        The decision and the copy in its precision; None when fp32 wins over weights
        loaded in bf16, whose fp32 copy lost their precision at load: read them again.
    """
    import psutil

    loaded = model.dtype
    params = sum(p.numel() for p in model.parameters())
    extra = params * (6 - loaded.itemsize)  # bytes to hold both copies at once
    names = {dtype: name for name, dtype in DTYPES.items()}
    if loaded not in (torch.float32, torch.bfloat16) or extra > (
        psutil.virtual_memory().available // 2
    ):
        return PrecisionChoice(names.get(loaded, "fp32"), "policy"), model
    other = torch.bfloat16 if loaded == torch.float32 else torch.float32
    copies = {names[loaded]: model, names[other]: copy.deepcopy(model).to(other)}
    choice = measure_pair(
        lambda: run(copies["fp32"], "fp32"), lambda: run(copies["bf16"], "bf16"), device, photos
    )
    remember(identity, device, choice)
    if choice.precision == "fp32" and loaded != torch.float32:
        return choice, None
    return choice, copies[choice.precision]


def cached_choice(
    identity: str, device: torch.device, cache: Path | None = None
) -> PrecisionChoice | None:
    """The decision measured before for ``identity`` on this machine, or None."""
    found = read_entries(cache or cache_dir() / CACHE_FILE).get(_key(identity, device))
    # Decisions written before layouts or attention were measured lack those: measure again.
    if not (
        isinstance(found, dict)
        and found.get("precision") in DTYPES
        and "channels_last" in found
        and "attention" in found
    ):
        return None
    return PrecisionChoice(
        found["precision"],
        "cached",
        dict(found.get("photos_per_s") or {}),
        dict(found.get("cosine") or {}),
        bool(found["channels_last"]),
        str(found["attention"] or ""),
    )


def remember(
    identity: str, device: torch.device, choice: PrecisionChoice, cache: Path | None = None
) -> None:
    """Keep a measured decision for ``identity`` on this machine."""
    _write_cache(cache or cache_dir() / CACHE_FILE, _key(identity, device), choice)


def _key(identity: str, device: torch.device) -> str:
    return f"{identity}|{machine_key(device)}"


def choose_precision(
    identity: str,
    device: torch.device,
    measure_now: Callable[[], PrecisionChoice],
    cache: Path | None = None,
) -> PrecisionChoice:
    """The precision for a model on this machine: from the cache, else measured and cached.

    Parameters
    ----------
    identity
        What identifies the model's weights and architecture (card name and source).
    measure_now
        Measures the model (see :func:`measure`); called only when no decision is cached,
        so that a cached decision costs no model load.
    cache
        The JSON file of decisions (default: ``precision.json`` in :func:`cache_dir`).
    """
    found = cached_choice(identity, device, cache)
    if found is not None:
        return found
    choice = measure_now()
    remember(identity, device, choice, cache)
    return choice
