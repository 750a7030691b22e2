"""One requests- and tokens-per-minute budget shared by every worker of a cluster.

An API's limits hold for the account, not for each process: with N workers each running
its own :class:`~naturelens.vlm.remote.RateLimiter`, the cluster would send N times the
allowed rate and spend its time on 429 answers and back-off. Here one Ray actor holds the
budget; each worker's model asks it for room before every request.
"""

from __future__ import annotations

from typing import Any

from naturelens.scale.cluster import ray_module
from naturelens.vlm.remote import RateLimiter


class _Budget:
    """The actor's state: one :class:`RateLimiter`. Its ``reserve`` never blocks, so the
    actor answers every worker at once and the waiting happens in the workers."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self.limiter = RateLimiter(rpm, tpm)

    def reserve(self, tokens: int) -> float:
        return self.limiter.reserve(tokens)


def start_budget(rpm: int | None, tpm: int | None) -> Any:
    """Start the shared budget on the cluster; returns the actor handle (None when there is
    no limit to share). The driver holds the handle: the actor lives as long as the job."""
    if rpm is None and tpm is None:
        return None
    ray = ray_module()
    return ray.remote(num_cpus=0)(_Budget).remote(rpm, tpm)


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

    def reserve(self, tokens: int) -> float:
        """Room now (0.0), or seconds to wait before asking again."""
        return float(ray_module().get(self.budget.reserve.remote(tokens)))
