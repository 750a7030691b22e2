"""Scale out on Ray: embed, tag, describe and classify a collection across a cluster.

The local commands, with ``--ray``, run their per-photo model work as a Ray Data
pipeline (photo references -> read -> decode -> a pool of model workers) and write the
results as they arrive into the same stores, under the same cache keys and run ids, as
the local path. Ray is optional (``pip install 'naturelens[ray]'``) and imported only
when a job runs; importing this package imports neither Ray nor the models.
"""

from importlib import import_module
from typing import Any

from naturelens.scale.cluster import RayOptions, ScaleError, connect, looks_like_address

_LAZY = {
    "describe_on_ray": "naturelens.scale.describe",
    "tag_on_ray": "naturelens.scale.describe",
    "embed_on_ray": "naturelens.scale.embed",
    "prepare_on_ray": "naturelens.scale.methods",
    "ON_RAY": "naturelens.scale.methods",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = ["RayOptions", "ScaleError", "connect", "looks_like_address", *_LAZY]
