"""finetune: a backbone plus a linear head, trained on the workspace's labelled photos.

Three modes: ``head`` (backbone frozen, only the head learns), ``last`` (the last N blocks
of the backbone learn too) and ``lora`` (low-rank adapters on the attention's query and
value layers, with peft). Training uses augmentation suited to photos (random resized
crop, horizontal flip, colour jitter), class-balanced sampling, a validation split with
early stopping, and bf16 mixed precision where the hardware runs it. The trained model is
saved as a folder under ``<workspace>/models/`` that ``naturelens predict`` reloads.

The helpers here (trainable parts, augmentation, saving adapted weights) also serve the
contrastive method.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from naturelens.methods.base import Method, PhotoSet
from naturelens.methods.probe import (
    fit_fingerprint,
    is_saved_fit,
    model_dir_for,
    model_info,
    read_model_info,
    write_model_dir,
)
from naturelens.models.backbones import Backbone, Preprocessing, load_backbone
from naturelens.sources.images import decode_photo
from naturelens.workspace.core import Prediction, Workspace

MODES = ("head", "last", "lora")
# Learning rates for the backbone's trainable parts; the head has its own (head_lr).
DEFAULT_LR = {"head": 0.0, "last": 2e-5, "lora": 2e-4}
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
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    backbone.requires_grad_(False)
    if mode == "last":
        stack = backbone.blocks()
        if not 1 <= blocks <= len(stack):
            raise ValueError(f"blocks must be between 1 and {len(stack)} for {backbone.card.name}")
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
        raise ValueError(f"saved weights do not fit {backbone.card.name}: {unknown[:3]}...")
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


# --------------------------------------------------------------------------- the method


class FineTune(Method):
    """Fine-tune a backbone with a linear classification head.

    Parameters
    ----------
    model
        Backbone card name, folder or hub id.
    mode
        ``head`` (frozen backbone), ``last`` (last ``blocks`` blocks too) or ``lora``.
    blocks
        Blocks trained in ``last`` mode.
    lora_rank, lora_alpha
        LoRA adapter rank and scaling.
    epochs
        Most passes over the training photos (early stopping may end sooner).
    batch_size
        Photos per step.
    lr, head_lr
        Learning rates of the backbone's trainable part (default by mode) and of the head.
    weight_decay
        AdamW weight decay.
    val_fraction
        Share of each class's photos held out for validation (classes with fewer than
        3 photos are not split); 0 trains for ``epochs`` without early stopping.
    patience
        Epochs without a better validation loss before training stops.
    augment
        Random resized crop, flip and colour jitter on training photos.
    balanced
        Draw training photos so that every class is equally frequent.
    seed
        Seed of the split, the sampling, the augmentation and the head's initialisation.
    device, precision
        See :func:`naturelens.models.backbones.load_backbone`; bf16 autocast where supported.
    workers
        Photo-decoding threads.
    save_as
        Folder name under ``<workspace>/models/`` (default: derived from the fit).
    """

    name = "finetune"

    def __init__(
        self,
        model: str = "dinov2-small",
        mode: str = "head",
        blocks: int = 2,
        lora_rank: int = 8,
        lora_alpha: int = 16,
        epochs: int = 15,
        batch_size: int = 16,
        lr: float | None = None,
        head_lr: float = 1e-3,
        weight_decay: float = 1e-4,
        val_fraction: float = 0.2,
        patience: int = 3,
        augment: bool = True,
        balanced: bool = True,
        seed: int = 0,
        device: str | None = None,
        precision: str = "auto",
        workers: int | None = None,
        save_as: str | None = None,
    ):
        self.model = model
        self.mode = mode
        self.blocks = blocks
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.augment = augment
        self.balanced = balanced
        self.seed = seed
        self.device = device
        self.precision = precision
        self.workers = workers
        self.save_as = save_as

    def _check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")

    def _build(self, ws_root: Path | None, n_classes: int) -> None:
        self.backbone_, self.trainable_ = adapted_backbone(self, self.mode, ws_root)
        self.head_ = nn.Linear(self.backbone_.dim, n_classes).to(self.backbone_.device)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.backbone_.autocast():
            if self.mode == "head":
                with torch.no_grad():
                    feats = self.backbone_.features(x)
            else:
                feats = self.backbone_.features(x)
        return self.head_(feats.to(self.head_.weight.dtype))

    def fit(self, photos: PhotoSet, labels: Sequence[str] | None = None) -> FineTune:
        from naturelens.models.embedding import photo_batches

        if labels is None:
            raise ValueError("finetune needs labelled photos")
        self._check()
        ws = photos.workspace
        fingerprint = fit_fingerprint(ws, self, photos.ids)
        folder = model_dir_for(ws, self, photos.ids, self.save_as)
        if is_saved_fit(folder, fingerprint):
            # An identical fit was saved (an interrupted run resuming): reuse it.
            return self._restore(folder, ws.root)
        classes = [c for c in ws.taxonomy.all_ids if c in set(labels)]
        if len(classes) < 2:
            raise ValueError(
                f"finetune needs labelled photos of at least two classes, got {classes}"
            )
        index = {c: i for i, c in enumerate(classes)}
        generator = set_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.classes_ = classes
        self._build(ws.root, len(classes))
        backbone, head = self.backbone_, self.head_
        label_of = {pid: index[c] for pid, c in zip(photos.ids, labels, strict=True)}
        ids = list(label_of)
        train_idx, val_idx = stratified_split(
            ids, [label_of[i] for i in ids], self.val_fraction, rng
        )
        train_ids = [ids[i] for i in train_idx]
        val_ids = [ids[i] for i in val_idx]
        val_pixels, val_ids = _decode_all(ws, val_ids, backbone, self.workers)
        val_y = torch.tensor([label_of[i] for i in val_ids], device=backbone.device)

        lr = DEFAULT_LR[self.mode] if self.lr is None else self.lr
        groups: list[dict[str, Any]] = [{"params": head.parameters(), "lr": self.head_lr}]
        if self.trainable_:
            groups.append({"params": self.trainable_, "lr": lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        decode = (
            augmenting_decoder(backbone.preprocessing, self.seed)
            if self.augment
            else backbone.preprocessing.decode
        )
        best_loss, best_state, stale = math.inf, None, 0
        self.history_: list[dict[str, float]] = []
        train_labels = [label_of[i] for i in train_ids]
        for epoch in range(self.epochs):
            backbone.train(self.mode != "head")
            head.train()
            order = balanced_order(train_labels, rng, self.balanced)
            total, seen = 0.0, 0
            epoch_ids = [train_ids[i] for i in order]
            batches = photo_batches(ws, epoch_ids, backbone, self.batch_size, decode, self.workers)
            for batch in batches:
                if not batch.ids:
                    continue
                x = training_input(backbone, batch.pixels, generator if self.augment else None)
                y = torch.tensor([label_of[i] for i in batch.ids], device=backbone.device)
                loss = loss_fn(self._logits(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch.ids)
                seen += len(batch.ids)
            if not seen:
                raise ValueError("finetune: none of the training photos could be decoded")
            record = {"epoch": epoch + 1, "train_loss": total / seen}
            if val_ids:
                record.update(self._validate(val_pixels, val_y, loss_fn))
                if record["val_loss"] < best_loss - 1e-4:
                    best_loss, stale = record["val_loss"], 0
                    best_state = (trainable_state(backbone), _cpu_state(head))
                else:
                    stale += 1
            self.history_.append(record)
            if val_ids and stale >= self.patience:
                break
        if best_state is not None:
            load_trainable_state(backbone, best_state[0])
            head.load_state_dict(best_state[1])
        self.n_train_ = len(train_ids)
        self.n_val_ = len(val_ids)
        self.fingerprint_ = fingerprint
        self.model_dir_ = self.save(folder)
        ready_for_inference(backbone, head)
        return self

    def _validate(self, pixels: np.ndarray, y: torch.Tensor, loss_fn) -> dict[str, float]:
        self.backbone_.eval()
        self.head_.eval()
        logits = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                x = self.backbone_.pixels_to_input(pixels[start : start + self.batch_size])
                logits.append(self._logits(x).float())
        out = torch.cat(logits)
        return {
            "val_loss": float(loss_fn(out, y)),
            "val_accuracy": float((out.argmax(1) == y).float().mean()),
        }

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        def classify(x: torch.Tensor) -> np.ndarray:
            return torch.softmax(self._logits(x).float(), dim=1).cpu().numpy()

        return predict_with_backbone(self, photos, classify)

    # -- persistence
    def save(self, folder: str | Path) -> Path:
        """Save parameters, classes, the trained backbone parts and the head."""
        state = trainable_state(self.backbone_)
        state.update({f"head.{k}": v for k, v in _cpu_state(self.head_).items()})
        counts = {"n_train": self.n_train_, "n_val": self.n_val_}
        return save_adapted(self, folder, state, counts)

    def _restore(self, folder: Path, ws_root: Path | None = None) -> FineTune:
        info = read_model_info(folder)
        self.classes_ = list(info["classes"])
        self._build(ws_root, len(self.classes_))
        state = restore_adapted(self, folder, info, ("n_train", "n_val"))
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        load_trainable_state(
            self.backbone_, {k: v for k, v in state.items() if not k.startswith("head.")}
        )
        self.head_.load_state_dict(head)
        ready_for_inference(self.backbone_, self.head_)
        return self

    @classmethod
    def load(cls, folder: str | Path) -> FineTune:
        """A trained model from a folder written by :meth:`save`."""
        info = read_model_info(folder)
        return cls(**info["params"])._restore(Path(folder))


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _decode_all(
    ws: Workspace, photo_ids: Sequence[str], backbone: Backbone, workers: int | None
) -> tuple[np.ndarray, list[str]]:
    """Eval-preprocessed pixels of a (small) set of photos, and the ids that decoded."""
    size = backbone.preprocessing.input_size
    empty = np.zeros((0, size, size, 3), dtype=np.uint8)
    return stack_batches(ws, photo_ids, backbone, 64, workers, lambda pixels: pixels, empty)
