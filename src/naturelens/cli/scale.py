"""The ``--ray [ADDRESS]`` options that embed, tag, describe and classify share."""

from __future__ import annotations

import typer

from naturelens.scale.cluster import WINDOW

RAY = typer.Option(
    None,
    "--ray",
    help="Run on Ray: alone, a local Ray on this machine; or a cluster's address "
    "(auto, HOST:6379, ray://HOST:10001). Put it after the workspace.",
)
RAY_WORKERS = typer.Option(2, help="With --ray: model workers (each loads the model once).")
RAY_GPUS = typer.Option(0.0, help="With --ray: GPUs per worker (0.5 puts two on a GPU).")
RAY_WINDOW = typer.Option(
    WINDOW,
    help="With --ray: photos per window (one Ray pipeline each; the driver holds one "
    "window at a time, and workers load the model again for each).",
)


def ray_options(
    address: str | None, workers: int, gpus: float, batch_size: int = 32, window: int = WINDOW
):
    """The :class:`~naturelens.scale.RayOptions` of a command's flags; None without --ray."""
    if address is None:
        return None
    from naturelens.scale.cluster import RayOptions

    return RayOptions(
        address=address,
        workers=workers,
        gpus_per_worker=gpus,
        batch_size=batch_size,
        window=window,
    )


def bare_ray_flag(args: list[str]) -> list[str]:
    """Read a ``--ray`` given without an address as ``--ray=local``.

    ``--ray`` takes an optional value, which click options cannot: a ``--ray`` that is
    last, or followed by an option or by something that is not a Ray address (the
    workspace folder), starts a local Ray.
    """
    from naturelens.scale.cluster import LOCAL, looks_like_address

    out = list(args)
    for i, arg in enumerate(out):
        if arg != "--ray":
            continue
        following = out[i + 1] if i + 1 < len(out) else None
        if following is None or following.startswith("-") or not looks_like_address(following):
            out[i] = f"--ray={LOCAL}"
    return out
