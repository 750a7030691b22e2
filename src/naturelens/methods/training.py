"""Training shared by the methods that adapt a backbone (finetune, contrastive).

Augmentation suited to photos (random resized crop, flip, colour jitter), which parts of a
backbone learn (the head only, the last blocks, or LoRA adapters), class-balanced sampling,
one epoch loop with early stopping on a validation loss, batched prediction, and saving or
restoring the adapted weights in a model folder.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from naturelens.methods.base import Method, MethodError, PhotoSet
from naturelens.methods.saving import model_info, write_model_dir
from naturelens.models.backbones import Backbone, Preprocessing, load_backbone
from naturelens.sources.images import decode_photo
from naturelens.workspace.core import Prediction, Workspace

MODES = ("head", "last", "lora")  # which part of a backbone learns
WEIGHTS_FILE = "weights.safetensors"


# --------------------------------------------------------------------------- augmentation


def random_resized_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """A random part of the photo (``scale`` of its area, aspect in ``ratio``) at ``size``."""
    w, h = image.size
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # an extreme panorama: fall back to the central square
        cw = ch = min(w, h)
        left, top = (w - cw) // 2, (h - ch) // 2
    return image.resize((size, size), resample, box=(left, top, left + cw, top + ch))


def augmenting_decoder(
    preprocessing: Preprocessing, seed: int, views: int = 1
) -> Callable[[bytes], np.ndarray]:
    """Photo bytes -> ``views`` random crops with random flips (uint8, stacked if views > 1).

    Each call draws from its own generator, seeded from ``seed`` and a call counter, so
    decoding can run in several threads.
    """
    counter = itertools.count()
    size = preprocessing.input_size

    def decode(data: bytes) -> np.ndarray:
        rng = np.random.default_rng([seed, next(counter)])
        image = decode_photo(data, max_side=preprocessing.draft_side)
        out = []
        for _ in range(views):
            view = random_resized_crop(image, size, rng)
            if rng.random() < 0.5:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out.append(np.array(view, dtype=np.uint8))
        return out[0] if views == 1 else np.stack(out)

    return decode


def colour_jitter(
    x: torch.Tensor, generator: torch.Generator, strength: float = 0.3
) -> torch.Tensor:
    """Random brightness, contrast and saturation per photo; ``x`` is (B, 3, H, W) in [0, 1]."""

    def factor() -> torch.Tensor:
        f = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * strength
        return f.to(x.device)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * factor() + gray
    return x.clamp_(0.0, 1.0)


def training_input(
    backbone: Backbone, pixels: np.ndarray, generator: torch.Generator | None
) -> torch.Tensor:
    """uint8 pixels (B, H, W, 3) -> fp32 model input, colour-jittered when ``generator``."""
    x = torch.from_numpy(pixels).to(backbone.device).permute(0, 3, 1, 2).float() / 255.0
    if generator is not None:
        x = colour_jitter(x, generator)
    return backbone.preprocessing.standardise(x)


# --------------------------------------------------------------------------- trainable parts


def make_trainable(
    backbone: Backbone, mode: str, blocks: int = 2, lora_rank: int = 8, lora_alpha: int = 16
) -> list[nn.Parameter]:
    """Unfreeze the part of ``backbone`` that ``mode`` trains; returns those parameters.

    ``head`` trains nothing of the backbone, ``last`` its last ``blocks`` blocks and the
    modules after them, ``lora`` adapters injected into its attention layers.
    """
    if mode not in MODES:
        raise MethodError(f"mode must be one of {MODES}, not {mode!r}")
    backbone.requires_grad_(False)
    if mode == "last":
        stack = backbone.blocks()
        if not 1 <= blocks <= len(stack):
            raise MethodError(f"blocks must be between 1 and {len(stack)} for {backbone.card.name}")
        for module in [*stack[-blocks:], *backbone.tail_modules()]:
            module.requires_grad_(True)
    elif mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=int(lora_rank),
            lora_alpha=int(lora_alpha),
            lora_dropout=0.0,
            target_modules=backbone.lora_targets(),
        )
        inject_adapter_in_model(config, backbone.module)
        backbone.to(backbone.device)
        for name, param in backbone.named_parameters():
            param.requires_grad_("lora_" in name)
    return [p for p in backbone.parameters() if p.requires_grad]


def trainable_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The backbone weights that training changed (detached CPU copies)."""
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in backbone.named_parameters()
        if p.requires_grad
    }


def load_trainable_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    params = dict(backbone.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise MethodError(f"saved weights do not fit {backbone.card.name}: {unknown[:3]}...")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))


def set_seed(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def balanced_order(labels: Sequence[int], rng: np.random.Generator, balanced: bool) -> np.ndarray:
    """An epoch's photo order: each class equally likely when ``balanced``, else a shuffle."""
    labels = np.asarray(labels)
    if not balanced:
        return rng.permutation(len(labels))
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())


def stratified_split(
    ids: Sequence[str], labels: Sequence[str], fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Indices for training and validation; classes with fewer than 3 photos stay in training."""
    train, val = [], []
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    for members in by_class.values():
        members = list(rng.permutation(members))
        n_val = max(1, round(len(members) * fraction)) if fraction > 0 and len(members) >= 3 else 0
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def prediction_stream(
    ws: Workspace,
    photo_ids: Sequence[str],
    backbone: Backbone,
    classify: Callable[[torch.Tensor], np.ndarray],
    classes: Sequence[str],
    model_name: str,
    batch_size: int,
    workers: int | None,
) -> Iterator[Prediction]:
    """Decode photos in threads, classify each batch, yield one prediction per photo."""
    from naturelens.models.embedding import photo_batches

    for batch in photo_batches(ws, dict.fromkeys(photo_ids), backbone, batch_size, workers=workers):
        if batch.ids:
            start = time.perf_counter()
            with torch.inference_mode():
                proba = classify(backbone.pixels_to_input(batch.pixels))
            each = (time.perf_counter() - start) / len(batch.ids)
            for pid, p in zip(batch.ids, proba, strict=True):
                best = int(p.argmax())
                yield Prediction(
                    photo_id=pid,
                    class_id=classes[best],
                    confidence=float(p[best]),
                    scores={c: float(v) for c, v in zip(classes, p, strict=True)},
                    model=model_name,
                    seconds=each,
                )
        for pid, reason, detail in batch.failed:
            yield Prediction(
                photo_id=pid,
                class_id=None,
                status="failed",
                detail=f"{reason}: {detail}" if detail else reason,
                model=model_name,
            )


def ready_for_inference(backbone: Backbone, *modules: nn.Module) -> None:
    """Eval mode, and weights cast to the compute type (faster than autocast on CPU)."""
    backbone.eval()
    if backbone.compute_dtype != torch.float32:
        backbone.to(backbone.compute_dtype)
        for m in modules:
            m.to(backbone.compute_dtype)
    for m in modules:
        m.eval()


def adapted_backbone(
    method: Method, mode: str, ws_root: Path | None
) -> tuple[Backbone, list[nn.Parameter]]:
    """Load ``method.model`` for training and unfreeze the part ``mode`` adapts.

    Reads the method's ``device``, ``precision``, ``blocks``, ``lora_rank`` and
    ``lora_alpha``; returns the backbone and its trainable parameters.
    """
    backbone = load_backbone(
        method.model,
        device=method.device,
        precision=method.precision,
        workspace=ws_root,
        training=True,
    )
    trainable = make_trainable(backbone, mode, method.blocks, method.lora_rank, method.lora_alpha)
    return backbone, trainable


def predict_with_backbone(
    method: Method, photos: PhotoSet, classify: Callable[[torch.Tensor], np.ndarray]
) -> Iterator[Prediction]:
    """:func:`prediction_stream` over ``photos`` with a fitted method's backbone and classes."""
    return prediction_stream(
        photos.workspace,
        photos.ids,
        method.backbone_,
        classify,
        method.classes_,
        method.model,
        method.batch_size,
        method.workers,
    )


def stack_batches(
    ws: Workspace,
    photo_ids: Sequence[str],
    backbone: Backbone,
    batch_size: int,
    workers: int | None,
    convert: Callable[[np.ndarray], np.ndarray],
    empty: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """``convert`` applied to the eval-preprocessed pixels of a (small) set of photos,
    stacked; and the ids that decoded. ``empty`` is the result when none did."""
    from naturelens.models.embedding import photo_batches

    ids: list[str] = []
    chunks: list[np.ndarray] = []
    for batch in photo_batches(ws, photo_ids, backbone, batch_size, workers=workers):
        if batch.ids:
            ids += batch.ids
            chunks.append(convert(batch.pixels))
    return (np.concatenate(chunks) if chunks else empty), ids


def save_adapted(
    method: Method,
    folder: str | Path,
    state: dict[str, torch.Tensor],
    counts: dict[str, int],
    write_more: Callable[[Path], None] | None = None,
) -> Path:
    """Save a method with adapted backbone weights as a model folder.

    ``state`` goes to ``weights.safetensors``; ``counts`` (photo counts) and the
    method's ``history_`` join its ``method.json``; ``write_more`` writes further files.
    """
    from safetensors.torch import save_file

    info = {**model_info(method), **counts, "history": method.history_}

    def write(tmp: Path) -> None:
        save_file(state, tmp / WEIGHTS_FILE)
        if write_more is not None:
            write_more(tmp)

    return write_model_dir(Path(folder), info, write)


def restore_adapted(
    method: Method, folder: str | Path, info: dict[str, Any], counts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Set a restored method's fit attributes from ``info``; returns the saved weights.

    ``counts`` names the photo counts saved by :func:`save_adapted` (``n_train``...),
    each restored as the attribute of that name plus ``_``.
    """
    from safetensors.torch import load_file

    for name in counts:
        setattr(method, f"{name}_", info.get(name, 0))
    method.history_ = info.get("history", [])
    method.fingerprint_ = info.get("fingerprint", "")
    method.model_dir_ = Path(folder)
    return load_file(Path(folder) / WEIGHTS_FILE)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def decode_all(
    ws: Workspace, photo_ids: Sequence[str], backbone: Backbone, workers: int | None
) -> tuple[np.ndarray, list[str]]:
    """Eval-preprocessed pixels of a (small) set of photos, and the ids that decoded."""
    size = backbone.preprocessing.input_size
    empty = np.zeros((0, size, size, 3), dtype=np.uint8)
    return stack_batches(ws, photo_ids, backbone, 64, workers, lambda pixels: pixels, empty)


def train_loop(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    epoch_batches: Callable[[int], Iterable[Any]],
    batch_loss: Callable[[Any], tuple[torch.Tensor, int] | None],
    validate: Callable[[], dict[str, float]] | None = None,
    patience: int = 3,
    snapshot: Callable[[], Any] | None = None,
    restore: Callable[[Any], None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[dict[str, float]]:
    """Train for up to ``epochs`` epochs; returns one record per epoch.

    ``scheduler`` (e.g. :func:`warmup_cosine`) steps after every optimiser step.

    ``epoch_batches(epoch)`` yields the epoch's batches (and sets train mode);
    ``batch_loss(batch)`` gives ``(loss, photos)`` or None to skip a batch. With
    ``validate``, training stops after ``patience`` epochs without a lower ``val_loss``
    and the weights of the best epoch (``snapshot``/``restore``) are kept.
    """
    history: list[dict[str, float]] = []
    best_loss, best_state, stale = math.inf, None, 0
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for batch in epoch_batches(epoch):
            out = batch_loss(batch)
            if out is None:
                continue
            loss, photos = out
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * photos
            seen += photos
        if not seen:
            raise MethodError(
                "none of the training photos could be decoded",
                "see `naturelens status --failures`",
            )
        record = {"epoch": epoch + 1, "train_loss": total / seen}
        if validate is not None:
            record.update(validate())
            if record["val_loss"] < best_loss - 1e-4:
                best_loss, stale = record["val_loss"], 0
                best_state = snapshot() if snapshot else None
            else:
                stale += 1
        history.append(record)
        if validate is not None and stale >= patience:
            break
    if best_state is not None and restore is not None:
        restore(best_state)
    return history


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then cosine decay to 0 at
    ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def schedule_epochs(epochs: int, photos: int, batch_size: int, min_steps: int) -> int:
    """Epochs to train: at least ``epochs``, and enough for ``min_steps`` optimiser steps.

    A few-shot set gives one or two steps per epoch; counting epochs alone would stop
    training after a few dozen steps.
    """
    per_epoch = max(1, math.ceil(photos / batch_size))
    return max(epochs, math.ceil(min_steps / per_epoch))
