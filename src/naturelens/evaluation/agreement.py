"""An accuracy estimate without labels, from how several runs agree.

With no gold labels there is nothing to score a run against, but several runs (different
methods or models) that mostly agree are informative: the Dawid-Skene model treats each
run as an annotator with its own confusion matrix and estimates, by expectation
maximisation, every run's confusion matrix and each photo's most likely class (crowd-kit's
``DawidSkene``). A run's estimated accuracy is the share of photos on which its answer is
the estimated true class, weighted by the estimated class frequencies. Where some photos do
have gold labels, the measured accuracy is shown beside the estimate so users can see how
well the estimate tracks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from naturelens.errors import NaturelensError


class AgreementError(NaturelensError, ValueError):
    """Too few runs or overlapping photos for a label-free estimate."""


def agreement_estimate(
    answers: Mapping[str, Mapping[str, str]],
    gold: Mapping[str, str] | None = None,
    n_iter: int = 100,
) -> dict:
    """Estimate each run's accuracy and a consensus class per photo from their answers.

    Parameters
    ----------
    answers
        run id -> {photo id -> class id} (only photos the run classified).
    gold
        Optional gold labels; runs are also scored on them for comparison.

    Returns
    -------
    dict
        ``runs``: per run its estimated accuracy, photos answered and (with gold) measured
        accuracy on labelled photos; ``consensus``: photo -> (class, probability).
    """
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    runs = [r for r, a in answers.items() if a]
    if len(runs) < 3:
        raise AgreementError(
            f"a label-free estimate needs at least 3 runs that classified photos; got {len(runs)}",
            "classify with more methods or models (e.g. zeroshot with two models and prompt)",
        )
    rows = [(pid, run, cls) for run in runs for pid, cls in answers[run].items()]
    frame = pd.DataFrame(rows, columns=["task", "worker", "label"])
    shared = frame.groupby("task")["worker"].nunique()
    if int((shared >= 2).sum()) < 10:
        raise AgreementError(
            "a label-free estimate needs at least 10 photos classified by two runs or more",
            "run the methods on the same photos",
        )
    model = DawidSkene(n_iter=n_iter)
    consensus = model.fit_predict(frame)
    probas = model.probas_
    priors = model.priors_
    errors = model.errors_  # (run, observed class) x true class: P(observed | true)
    out_runs = {}
    for run in runs:
        conf = errors.loc[run]
        accuracy = sum(
            float(priors[c]) * float(conf.loc[c, c]) if c in conf.index else 0.0
            for c in priors.index
        )
        row = {"estimated_accuracy": accuracy, "photos": len(answers[run])}
        if gold:
            scored = [pid for pid in answers[run] if pid in gold]
            if scored:
                row["measured_accuracy"] = float(
                    np.mean([answers[run][pid] == gold[pid] for pid in scored])
                )
                row["labelled_photos"] = len(scored)
        out_runs[run] = row
    return {
        "runs": out_runs,
        "consensus": {
            pid: (str(cls), float(probas.loc[pid].max())) for pid, cls in consensus.items()
        },
    }


def run_answers(predictions: Sequence) -> dict[str, str]:
    """photo id -> class id of a run's classified predictions."""
    return {p.photo_id: p.class_id for p in predictions if p.status == "ok" and p.class_id}
