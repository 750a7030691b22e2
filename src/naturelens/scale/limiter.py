"""One requests- and tokens-per-minute budget shared by every worker of a cluster, and the
record of which requests it let through.

An API's limits hold for the account, not for each process: with N workers each running
its own :class:`~naturelens.vlm.remote.RateLimiter`, the cluster would send N times the
allowed rate and spend its time on 429 answers and back-off. Here one Ray actor holds the
budget; each worker's model asks it for room before every request.

Because every request passes through it, the actor also remembers which photo each
request was for and which worker sent it, until the driver says the answer arrived. A
worker killed mid-request takes its answer with it; what the actor still remembers when
a window of the job is over is exactly those requests, and the driver records them in
the cost ledger as sent with no answer.
"""

from __future__ import annotations

import os
from typing import Any

from naturelens.scale.cluster import ray_module
from naturelens.vlm.remote import RateLimiter

# The ledger's error for a request whose worker was lost before the answer reached the
# driver: the request was sent (and may be billed), what it cost is unknown.
LOST = "worker lost before the answer came back"


class _Budget:
    """The actor's state: one :class:`RateLimiter` and the requests let through whose
    answers have not reached the driver. Its methods never block, so the actor answers
    every worker at once and the waiting happens in the workers."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self.limiter = RateLimiter(rpm, tpm)
        # (photo id, worker pid): one entry per call, its retries included. Entries are
        # forgotten as answers arrive, so this holds the requests in flight (and those
        # lost), not the job.
        self.sent: set[tuple[str, int]] = set()

    def reserve(self, tokens: int, photo_id: str | None = None, worker: int = 0) -> float:
        pause = self.limiter.reserve(tokens)
        if not pause and photo_id is not None:
            self.sent.add((photo_id, worker))
        return pause

    def arrived(self, calls: list[tuple[str, int]]) -> None:
        self.sent.difference_update(calls)

    def unanswered(self) -> list[tuple[str, int]]:
        lost, self.sent = sorted(self.sent), set()
        return lost


def start_budget(rpm: int | None, tpm: int | None) -> Any:
    """Start the shared budget on the cluster (no limit when both are None); returns the
    actor handle. The driver holds the handle: the actor lives as long as the job."""
    ray = ray_module()
    return ray.remote(num_cpus=0)(_Budget).remote(rpm, tpm)


def answers_arrived(budget: Any, calls: list[tuple[str, int]]) -> None:
    """Tell the budget that the answers of these ``(photo_id, worker)`` reached the
    driver (it forgets those requests). Does not wait: Ray delivers a caller's messages
    to an actor in order, so :func:`lost_requests` afterwards sees them."""
    budget.arrived.remote(calls)


def lost_requests(budget: Any) -> list[tuple[str, int]]:
    """``(photo_id, worker)`` of every request let through whose answer has not reached
    the driver; forgets them. Called when a window's pipeline is over, these are the
    requests of workers lost mid-request."""
    return ray_module().get(budget.unanswered.remote())


class SharedRateLimiter(RateLimiter):
    """A worker's side of the shared budget: a :class:`RateLimiter` whose room is kept by
    the budget actor (``acquire`` waits here, in the worker, between answers).

    Parameters
    ----------
    budget
        The actor handle from :func:`start_budget`.
    """

    def __init__(self, budget: Any):
        super().__init__()
        self.budget = budget

    def reserve(self, tokens: int, photo_id: str | None = None) -> float:
        """Room now (0.0), or seconds to wait before asking again. Room given for a
        photo is remembered by the budget, with this worker's process id."""
        ask = self.budget.reserve.remote(tokens, photo_id, os.getpid())
        return float(ray_module().get(ask))
