"""Ensemble: a vote over the stored predictions of other runs.

Each member run votes for the class it gave a photo (a rejection votes for "rejected");
failed and unparsed predictions, and photos a run did not predict, cast no vote. With
``voting="majority"`` every vote weighs 1; with ``voting="weighted"`` a run's vote weighs
its validation accuracy: measured on the labelled photos given to :meth:`Ensemble.fit`
when the run predicted them, otherwise the accuracy stored in the run's summary (as
``naturelens classify --shots`` and ``naturelens compare`` store it).

Ties are broken deterministically: the larger summed confidence of the tied answers wins,
then the answer that comes first in the taxonomy (rejection last). A photo that gets no
vote is recorded as ``failed`` with each member's reason. An ensemble prediction carries
the summed seconds, tokens and cost of the member predictions it is built from, since it
cannot exist without them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.workspace.core import Prediction, Workspace

REJECTED = "(rejected)"


class Ensemble(Method):
    """Vote over the predictions of stored runs.

    Parameters
    ----------
    runs
        Run ids, or ``"latest"``: the latest finished run of every other method.
    voting
        ``"majority"`` (one vote per run) or ``"weighted"`` (votes weighted by each run's
        validation accuracy).
    batch_size
        Photos whose member predictions are read from the catalog at a time.
    """

    name = "ensemble"
    needs_labels = False
    combines_runs = True

    def __init__(
        self,
        runs: Sequence[str] | str = "latest",
        voting: str = "majority",
        batch_size: int = 2048,
    ):
        self.runs = runs
        self.voting = voting
        self.batch_size = batch_size

    # ------------------------------------------------------------------ fit
    def comparison_note(self) -> str:
        if self.voting == "weighted":
            # The members' stored accuracy was measured on the same test photos.
            return "weights are the members' accuracy on these test photos: optimistic"
        return ""

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Ensemble:
        self.bind(context, photos)
        if self.voting not in ("majority", "weighted"):
            raise MethodError(f"voting must be 'majority' or 'weighted', not {self.voting!r}")
        ws = photos.workspace
        self.runs_ = resolve_runs(ws, self.runs)
        self.classes_ = ws.taxonomy.all_ids
        self.weights_ = {run: 1.0 for run in self.runs_}
        # The members learnt from gold labels: count every photo any of them trained on.
        self.trained_on_ = {run: set(ws.run(run)["params"].get("train", [])) for run in self.runs_}
        trained = set().union(*self.trained_on_.values())
        self.labels_used_ = len(trained | set(photos.ids))
        if self.voting == "weighted":
            gold = dict(zip(photos.ids, labels or [], strict=False))
            self.weights_ = {run: self._validation_accuracy(ws, run, gold) for run in self.runs_}
        return self

    def _validation_accuracy(self, ws: Workspace, run_id: str, gold: dict[str, str]) -> float:
        if gold:
            rows = [(p.photo_id, p.class_id, p.status) for p in ws.predictions(run_id, list(gold))]
            if rows:
                open_id = ws.taxonomy.open_set.id if ws.taxonomy.open_set else None
                right = sum(
                    1
                    for pid, cls, status in rows
                    if (status == "ok" and cls == gold[pid])
                    or (status == "rejected" and gold[pid] == open_id)
                )
                return right / len(rows)
        stored = ws.run(run_id)["summary"].get("accuracy")
        if stored is None:
            raise MethodError(
                f"run {run_id} has no stored accuracy and did not predict the labelled photos "
                "given to the ensemble; evaluate it with `naturelens classify --shots K` or "
                "`naturelens compare`, or use voting=majority"
            )
        return float(stored)

    # ------------------------------------------------------------------ predict
    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        ws = photos.workspace
        order = {c: i for i, c in enumerate([*ws.taxonomy.all_ids, REJECTED])}
        open_id = ws.taxonomy.open_set.id if ws.taxonomy.open_set else None
        for batch in photos.batches(self.batch_size):
            members: dict[str, list[tuple]] = defaultdict(list)
            for run_id in self.runs_:
                for p in ws.predictions(run_id, batch.ids):
                    members[p.photo_id].append(
                        (run_id, p.class_id, p.confidence, p.status, p.detail, p.seconds,
                         p.tokens_in, p.tokens_out, p.cost)
                    )  # fmt: skip
            for pid in batch.ids:
                learnt = sorted(
                    r for r in self.runs_ if pid in getattr(self, "trained_on_", {}).get(r, ())
                )
                if learnt:
                    # A member saw this photo with its label: any vote would be a leak.
                    yield Prediction(
                        pid,
                        None,
                        status="training",
                        detail="training photo of " + ", ".join(learnt),
                        model="ensemble",
                    )
                    continue
                yield self._vote(pid, members.get(pid, []), order, open_id)

    def _vote(self, photo_id: str, member_rows: list[tuple], order: dict, open_id) -> Prediction:
        weight: dict[str, float] = defaultdict(float)
        confidence: dict[str, float] = defaultdict(float)
        silent = []
        seconds = cost = 0.0
        tokens_in = tokens_out = 0
        for run_id, cls, conf, status, detail, secs, t_in, t_out, c in member_rows:
            seconds += secs or 0.0
            tokens_in += t_in or 0
            tokens_out += t_out or 0
            cost += c or 0.0
            if status == "ok" and cls is not None:
                answer = cls
            elif status == "rejected":
                answer = REJECTED
            else:
                silent.append(f"{run_id}: {status}" + (f" ({detail})" if detail else ""))
                continue
            weight[answer] += self.weights_[run_id]
            confidence[answer] += conf if conf is not None else 0.0
        total = sum(weight.values())
        cost_fields = dict(seconds=seconds, tokens_in=tokens_in, tokens_out=tokens_out, cost=cost)
        if not weight or total <= 0:
            missing = set(self.runs_) - {r[0] for r in member_rows}
            reasons = silent + [f"{r}: no prediction" for r in sorted(missing)]
            return Prediction(
                photo_id, None, status="failed",
                detail="no member run classified this photo: " + "; ".join(reasons),
                model="ensemble", **cost_fields,
            )  # fmt: skip
        winner = min(
            weight, key=lambda a: (-weight[a], -confidence[a], order.get(a, len(order)), a)
        )
        share = {a: w / total for a, w in weight.items()}
        scores = {(open_id or REJECTED) if a == REJECTED else a: v for a, v in share.items()}
        votes = ", ".join(f"{a}={weight[a]:g}" for a in sorted(weight, key=lambda a: -weight[a]))
        if winner == REJECTED:
            return Prediction(
                photo_id, open_id, confidence=share[winner], scores=scores, status="rejected",
                detail=f"votes: {votes}", model="ensemble", **cost_fields,
            )  # fmt: skip
        return Prediction(
            photo_id, winner, confidence=share[winner], scores=scores,
            detail=f"votes: {votes}", model="ensemble", **cost_fields,
        )  # fmt: skip


def resolve_runs(ws: Workspace, runs: Sequence[str] | str) -> list[str]:
    """Member run ids: the given ids (checked), or the latest finished run per method.

    Raises
    ------
    ValueError
        When a run is unknown, unfinished, made for another taxonomy, or there are none.
    """
    done = {r["run_id"]: r for r in ws.runs() if r["status"] == "done"}
    if isinstance(runs, str):
        if runs.strip() in ("latest", "latest per method"):
            latest: dict[str, str] = {}
            for r in ws.runs():  # ordered by start time, so later runs overwrite earlier
                if r["status"] == "done" and r["method"] != "ensemble":
                    latest[r["method"]] = r["run_id"]
            chosen = list(latest.values())
        else:
            chosen = [x.strip() for x in runs.strip("[]").split(",") if x.strip()]
    else:
        chosen = [str(x) for x in runs]
    if not chosen:
        raise MethodError("the ensemble has no runs to vote; run some methods first")
    everything = {r["run_id"]: r for r in ws.runs()}
    for run_id in chosen:
        if run_id not in everything:
            raise MethodError(f"no run {run_id!r}; see `naturelens status` for the runs")
        if run_id not in done:
            raise MethodError(f"run {run_id} is {everything[run_id]['status']}, not done")
        if everything[run_id]["taxonomy"] != ws.taxonomy.label:
            raise MethodError(f"run {run_id} used taxonomy {everything[run_id]['taxonomy']}")
    return list(dict.fromkeys(chosen))
