"""contrastive: adapt the backbone to the user's photos with a contrastive loss, then probe.

Two objectives share one loss function:

- ``supcon`` (supervised contrastive, Khosla et al. 2020): two augmented views of each
  labelled photo; views of photos of the same class are pulled together.
- ``simclr`` (self-supervised, Chen et al. 2020): two views of each photo of the
  workspace, labelled or not (up to ``max_photos``); only a photo's own two views are
  positives, so the unlabelled photos teach the backbone what this collection looks like.

Either way a small projection head is trained with the adapted part of the backbone (its
last blocks or LoRA adapters) and then dropped; a probe classifier is fitted on the
adapted backbone's embeddings of the labelled photos.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.methods.probe import CLASSIFIERS, make_classifier
from naturelens.methods.saving import read_model_info
from naturelens.methods.training import (
    adapted_backbone,
    augmenting_decoder,
    load_trainable_state,
    predict_with_backbone,
    ready_for_inference,
    restore_adapted,
    save_adapted,
    set_seed,
    stack_batches,
    train_loop,
    trainable_state,
    training_input,
)
from naturelens.workspace.core import Prediction

OBJECTIVES = ("supcon", "simclr")
ADAPT = ("last", "lora")


def contrastive_loss(
    z: torch.Tensor, groups: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss; with one group per photo it is SimCLR's NT-Xent.

    Parameters
    ----------
    z
        Projections (N, d) of all views.
    groups
        (N,) group of each view: views of the same group are positives.
    """
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (groups[:, None] == groups[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    has = counts > 0
    if not bool(has.any()):
        return logits.new_zeros(()) * z.sum()  # no positives at all: nothing to learn
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has] / counts[has]
    return -per_anchor.mean()


class Contrastive(Method):
    """Contrastive adaptation of a backbone (SupCon or SimCLR), followed by a probe.

    Parameters
    ----------
    model
        Backbone card name, folder or hub id.
    objective
        ``supcon`` (labelled photos) or ``simclr`` (all the workspace's photos, unlabelled).
    adapt
        What of the backbone learns: ``last`` (its last ``blocks`` blocks) or ``lora``.
    blocks, lora_rank, lora_alpha
        Size of the adapted part.
    epochs, batch_size, lr
        Training length, photos per step (two views each), AdamW learning rate.
    temperature
        Contrastive softmax temperature.
    projection_dim
        Output size of the projection head used only during training.
    max_photos
        For ``simclr``: most workspace photos to train on (a random sample).
    classifier, C, k
        The probe fitted afterwards (see :class:`naturelens.methods.probe.Probe`).
    seed, device, precision, workers, save_as
        As for :class:`naturelens.methods.finetune.FineTune`.
    """

    name = "contrastive"
    saves_model = True

    def __init__(
        self,
        model: str = "dinov2-small",
        objective: str = "supcon",
        adapt: str = "last",
        blocks: int = 2,
        lora_rank: int = 8,
        lora_alpha: int = 16,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 2e-5,
        temperature: float = 0.1,
        projection_dim: int = 128,
        max_photos: int = 2000,
        classifier: str = "logreg",
        C: float = 1.0,
        k: int = 10,
        seed: int = 0,
        device: str | None = None,
        precision: str = "auto",
        workers: int | None = None,
        save_as: str | None = None,
    ):
        self.model = model
        self.objective = objective
        self.adapt = adapt
        self.blocks = blocks
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.max_photos = max_photos
        self.classifier = classifier
        self.C = C
        self.k = k
        self.seed = seed
        self.device = device
        self.precision = precision
        self.workers = workers
        self.save_as = save_as

    def _check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise MethodError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.adapt not in ADAPT:
            raise MethodError(f"adapt must be one of {ADAPT}, not {self.adapt!r}")
        if self.classifier not in CLASSIFIERS:
            raise MethodError(f"classifier must be one of {CLASSIFIERS}, not {self.classifier!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise MethodError("epochs must be at least 1 and batch_size at least 2")

    def _build(self, ws_root: Path | None) -> None:
        self.backbone_, self.trainable_ = adapted_backbone(self, self.adapt, ws_root)

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Contrastive:
        self.bind(context, photos)
        if labels is None:
            raise MethodError("contrastive needs labelled photos for its probe")
        self._check()
        ws = photos.workspace
        generator = set_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self._build(ws.root)
        label_of = dict(zip(photos.ids, labels, strict=True))
        class_index = {c: i for i, c in enumerate(sorted(set(labels)))}
        if self.objective == "supcon":
            pool = list(label_of)
        else:
            others = [p for p in ws.photo_ids() if p not in label_of]
            room = max(0, self.max_photos - len(label_of))
            if len(others) > room:
                others = [others[i] for i in sorted(rng.choice(len(others), room, replace=False))]
            pool = list(label_of) + others
        groups = class_index if self.objective == "supcon" else None  # simclr: none
        self.history_ = self._train(ws, pool, label_of, groups, rng, generator)
        self.backbone_.eval()
        X, ids = self._embed_labelled(ws, list(label_of))
        y = [label_of[i] for i in ids]
        if len(set(y)) < 2:
            raise MethodError(
                f"contrastive needs labelled photos of at least two classes, got {sorted(set(y))}"
            )
        self.classifier_ = make_classifier(self.classifier, self.C, self.k, True, len(y)).fit(X, y)
        self.classes_ = [str(c) for c in self.classifier_.classes_]
        self.n_train_ = len(y)
        self.n_adapt_ = len(pool)
        ready_for_inference(self.backbone_)
        return self

    def _train(self, ws, pool, label_of, class_index, rng, generator) -> list[dict[str, float]]:
        from naturelens.models.embedding import photo_batches

        backbone = self.backbone_
        dim = backbone.dim
        projector = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, self.projection_dim)
        )
        projector.to(backbone.device)
        optimizer = torch.optim.AdamW(
            [
                {"params": self.trainable_, "lr": self.lr},
                {"params": projector.parameters(), "lr": 1e-3},
            ],
            weight_decay=1e-4,
        )
        decode = augmenting_decoder(backbone.preprocessing, self.seed, views=2)

        def epoch_batches(epoch: int):
            backbone.train()
            projector.train()
            order = [pool[i] for i in rng.permutation(len(pool))]
            return photo_batches(ws, order, backbone, self.batch_size, decode, self.workers)

        def batch_loss(batch):
            if len(batch.ids) < 2:
                return None  # one photo alone has no negatives
            views = batch.pixels.reshape(-1, *batch.pixels.shape[2:])  # (2B, H, W, 3)
            if class_index is not None:
                group = [class_index[label_of[i]] for i in batch.ids]
            else:
                group = list(range(len(batch.ids)))
            groups = torch.tensor(np.repeat(group, 2), device=backbone.device)
            x = training_input(backbone, views, generator)
            with backbone.autocast():
                z = projector(backbone.features(x).float())
            return contrastive_loss(z, groups, self.temperature), len(batch.ids)

        return train_loop(optimizer, self.epochs, epoch_batches, batch_loss)

    def _embed_labelled(self, ws, photo_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        backbone = self.backbone_
        empty = np.zeros((0, backbone.dim), np.float32)
        return stack_batches(
            ws, photo_ids, backbone, self.batch_size, self.workers, backbone.embed, empty
        )

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        def classify(x: torch.Tensor) -> np.ndarray:
            feats = self.backbone_.features(x).float().cpu().numpy()
            proba = self.classifier_.predict_proba(feats)
            order = [list(self.classifier_.classes_).index(c) for c in self.classes_]
            return proba[:, order]

        return predict_with_backbone(self, photos, classify)

    # -- persistence
    def save(self, folder: str | Path) -> Path:
        """Save parameters, the adapted backbone weights and the probe classifier."""
        import joblib

        counts = {"n_train": self.n_train_, "n_adapt": self.n_adapt_}
        return save_adapted(
            self,
            folder,
            trainable_state(self.backbone_),
            counts,
            lambda tmp: joblib.dump(self.classifier_, tmp / "classifier.joblib"),
        )

    def _restore(self, folder: Path, ws_root: Path | None = None) -> Contrastive:
        import joblib

        info = read_model_info(folder)
        self._build(ws_root)
        load_trainable_state(
            self.backbone_, restore_adapted(self, folder, info, ("n_train", "n_adapt"))
        )
        ready_for_inference(self.backbone_)
        self.classifier_ = joblib.load(Path(folder) / "classifier.joblib")
        self.classes_ = list(info["classes"])
        return self

    @classmethod
    def load(cls, folder: str | Path, workspace: Path | None = None) -> Contrastive:
        """A trained model from a folder written by :meth:`save`."""
        info = read_model_info(folder)
        return cls(**info["params"])._restore(Path(folder), workspace)
