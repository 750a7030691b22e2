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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.methods.saving import read_model_info
from naturelens.methods.training import (
    MODES,
    adapted_backbone,
    augmenting_decoder,
    balanced_order,
    cpu_state,
    decode_all,
    load_trainable_state,
    predict_with_backbone,
    ready_for_inference,
    restore_adapted,
    save_adapted,
    schedule_epochs,
    set_seed,
    stratified_split,
    train_loop,
    trainable_state,
    training_input,
    warmup_cosine,
)
from naturelens.workspace.core import Prediction

# Learning rates for the backbone's trainable parts; the head has its own (head_lr).
HEAD_INITS = ("probe", "random")
DEFAULT_LR = {"head": 0.0, "last": 2e-5, "lora": 2e-4}


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
        Share of each class's photos held out for validation when every class has at
        least ``min_val_photos`` labelled photos; otherwise (few shots) no photo is held
        out and training runs the fixed schedule without early stopping. 0 never holds out.
    patience
        Epochs without a better validation loss before training stops.
    min_steps
        Fewest optimiser steps: ``epochs`` is raised until the schedule has this many
        (a 5-shot set is one step per epoch).
    warmup
        Share of the optimiser steps spent warming the learning rates up (then cosine decay).
    head_init
        ``probe``: start the head from a logistic regression fitted on the frozen features
        of the training photos (linear probe, then fine-tune), so fine-tuning starts where
        the probe ends; ``random``: a random head.
    min_val_photos
        Labelled photos every class needs before a validation share is held out.
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
    saves_model = True

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
        min_steps: int = 100,
        warmup: float = 0.1,
        head_init: str = "probe",
        min_val_photos: int = 10,
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
        self.min_steps = min_steps
        self.warmup = warmup
        self.head_init = head_init
        self.min_val_photos = min_val_photos
        self.augment = augment
        self.balanced = balanced
        self.seed = seed
        self.device = device
        self.precision = precision
        self.workers = workers
        self.save_as = save_as

    def _check(self) -> None:
        # Values set as attributes after construction are checked here, as --param's are.
        self.check_params(self.get_params())
        if self.mode not in MODES:
            raise MethodError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.head_init not in HEAD_INITS:
            raise MethodError(f"head_init must be one of {HEAD_INITS}, not {self.head_init!r}")

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

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> FineTune:
        from naturelens.models.embedding import photo_batches

        self.bind(context, photos)
        if labels is None:
            raise MethodError("finetune needs labelled photos")
        self._check()
        ws = photos.workspace
        classes = [c for c in ws.taxonomy.all_ids if c in set(labels)]
        if len(classes) < 2:
            raise MethodError(
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
        per_class = np.bincount([label_of[i] for i in ids])
        # A validation set of one or two photos per class is noise: at few shots train the
        # fixed schedule instead, and say so.
        hold_out = self.val_fraction if per_class.min() >= self.min_val_photos else 0.0
        train_idx, val_idx = stratified_split(ids, [label_of[i] for i in ids], hold_out, rng)
        train_ids = [ids[i] for i in train_idx]
        val_ids = [ids[i] for i in val_idx]
        val_pixels, val_ids = decode_all(ws, val_ids, backbone, self.workers)
        val_y = torch.tensor([label_of[i] for i in val_ids], device=backbone.device)
        if self.head_init == "probe":
            self._init_head_from_probe(ws, train_ids, label_of)
        epochs = schedule_epochs(self.epochs, len(train_ids), self.batch_size, self.min_steps)
        total_steps = epochs * -(-len(train_ids) // self.batch_size)

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
        train_labels = [label_of[i] for i in train_ids]

        def epoch_batches(epoch: int):
            backbone.train(self.mode != "head")
            head.train()
            order = balanced_order(train_labels, rng, self.balanced)
            epoch_ids = [train_ids[i] for i in order]
            return photo_batches(ws, epoch_ids, backbone, self.batch_size, decode, self.workers)

        def batch_loss(batch):
            if not batch.ids:
                return None
            x = training_input(backbone, batch.pixels, generator if self.augment else None)
            y = torch.tensor([label_of[i] for i in batch.ids], device=backbone.device)
            return loss_fn(self._logits(x).float(), y), len(batch.ids)

        def restore(state) -> None:
            load_trainable_state(backbone, state[0])
            head.load_state_dict(state[1])

        scheduler = warmup_cosine(optimizer, total_steps, max(1, round(self.warmup * total_steps)))
        self.history_ = train_loop(
            optimizer,
            epochs,
            epoch_batches,
            batch_loss,
            validate=(lambda: self._validate(val_pixels, val_y, loss_fn)) if val_ids else None,
            patience=self.patience,
            snapshot=lambda: (trainable_state(backbone), cpu_state(head)),
            restore=restore,
            scheduler=scheduler,
        )
        self.n_train_ = len(train_ids)
        self.n_val_ = len(val_ids)
        self.run_facts_ = {
            "train_photos": self.n_train_,
            "validation_photos": self.n_val_,
            "schedule": (
                f"up to {total_steps} optimiser steps ({epochs} epochs), early stopping on "
                f"{self.n_val_} validation photos"
                if val_ids
                else f"fixed {total_steps} optimiser steps ({epochs} epochs), no early stopping"
                f" (validation needs {self.min_val_photos} photos per class)"
            ),
            "head_init": self.head_init,
        }
        ready_for_inference(backbone, head)
        return self

    def _init_head_from_probe(self, ws, train_ids: list[str], label_of: dict[str, int]) -> None:
        """Set the head to a logistic regression on the frozen features of the training
        photos (unaugmented), so that fine-tuning starts at the linear probe's solution."""
        from sklearn.linear_model import LogisticRegression

        pixels, ids = decode_all(ws, train_ids, self.backbone_, self.workers)
        if not ids:
            return
        self.backbone_.eval()
        feats = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                x = self.backbone_.pixels_to_input(pixels[start : start + self.batch_size])
                with self.backbone_.autocast():
                    feats.append(self.backbone_.features(x).float().cpu())
        X = torch.cat(feats).numpy()
        y = np.array([label_of[i] for i in ids])
        if len(set(y.tolist())) < len(self.classes_):
            return  # a class lost every photo to decoding: keep the random head
        probe = LogisticRegression(C=1.0, max_iter=5000).fit(X, y)
        coef, bias = probe.coef_, probe.intercept_
        if coef.shape[0] == 1:  # scikit-learn keeps one row for two classes
            coef = np.concatenate([-coef / 2, coef / 2])
            bias = np.concatenate([-bias / 2, bias / 2])
        with torch.no_grad():
            self.head_.weight.copy_(torch.as_tensor(coef, dtype=self.head_.weight.dtype))
            self.head_.bias.copy_(torch.as_tensor(bias, dtype=self.head_.bias.dtype))

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
        state.update({f"head.{k}": v for k, v in cpu_state(self.head_).items()})
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
    def load(cls, folder: str | Path, workspace: Path | None = None) -> FineTune:
        """A trained model from a folder written by :meth:`save`."""
        info = read_model_info(folder)
        return cls(**info["params"])._restore(Path(folder), workspace)
