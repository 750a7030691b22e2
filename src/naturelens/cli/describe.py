"""The describe and tag commands: write each photo's description into the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from naturelens.cli.app import app, console, err, fail
from naturelens.cli.progress import photo_progress
from naturelens.cli.scale import RAY, RAY_GPUS, RAY_WINDOW, RAY_WORKERS, ray_options
from naturelens.cli.workspace import open_workspace

if TYPE_CHECKING:
    from naturelens.text.describe import DescribeReport


def _print_report(ws, report: DescribeReport, show: int) -> None:
    from naturelens.text.describe import load_descriptions

    console.print(
        f"{report.source} ({report.prompt_version}): {report.described} described, "
        f"{report.skipped} already done, {report.failed} failed"
        + (f", cost ${report.cost:.4f}" if report.cost else "")
    )
    for line in report.failures[:10]:
        err.print(f"failed: {line}", highlight=False)
    if len(report.failures) > 10:
        err.print(f"... and {len(report.failures) - 10} more failures")
    if show:
        table = Table("photo", "description", title=f"{report.source}, first {show}")
        descs = load_descriptions(ws, report.source, prompt_version=report.prompt_version)
        paths = ws.photo_paths(list(descs)[:show])
        for pid, d in list(descs.items())[:show]:
            table.add_row(
                paths.get(pid, Path(pid)).name, d.text if d.status == "ok" else f"({d.detail})"
            )
        console.print(table)


@app.command()
def describe(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    model: str = typer.Option(
        None, help="Vision-language model: card name, folder or server model."
    ),
    base_url: str = typer.Option(
        None, help="OpenAI-compatible server: selects the remote back-end."
    ),
    prompt: str = typer.Option("describe", help="Prompt name or YAML file."),
    batch_size: int = typer.Option(8, min=1, help="Photos sent to the model at once."),
    max_tokens: int = typer.Option(160, help="Longest description, in tokens."),
    show: int = typer.Option(0, min=0, help="Print this many descriptions afterwards."),
    list_sets: bool = typer.Option(
        False, "--list", help="List the descriptions the workspace holds."
    ),
    rpm: int = typer.Option(None, help="Remote models: requests per minute, for all workers."),
    tpm: int = typer.Option(None, help="Remote models: tokens per minute, for all workers."),
    ray: str = RAY,
    ray_workers: int = RAY_WORKERS,
    ray_gpus: float = RAY_GPUS,
    ray_window: int = RAY_WINDOW,
) -> None:
    """Have a vision-language model describe every photo (resumable)."""
    from naturelens.text.describe import DescribeReport, description_sets, done_ids, source_name

    with open_workspace(workspace) as ws:
        if list_sets:
            table = Table("source", "prompt", "ok", "failed", "cost", title="Descriptions")
            for s in description_sets(ws):
                table.add_row(
                    s["source"],
                    s["prompt_version"],
                    str(s["ok"]),
                    str(s["failed"]),
                    f"${s['cost']:.4f}",
                )
            console.print(table)
            return
        if not model:
            fail("--model is required (a VLM card name, a local folder or a server's model)")
        from naturelens.methods.params import check_values

        check_values({"batch_size": batch_size, "max_tokens": max_tokens, "rpm": rpm, "tpm": tpm})
        from naturelens.models.cards import CardError
        from naturelens.prompts import PromptError, load_prompt
        from naturelens.text.describe import describe_photos
        from naturelens.vlm import VLMError, load_vlm

        ids = ws.photo_ids()
        try:
            version = load_prompt(prompt).version_tag
            done = done_ids(ws, source_name(model), version)
            if all(p in done for p in ids):  # nothing to do: do not load the model
                _print_report(
                    ws, DescribeReport(source_name(model), version, skipped=len(ids)), show
                )
                return
            cluster = ray_options(ray, ray_workers, ray_gpus, batch_size, ray_window)
            limits = {k: v for k, v in (("rpm", rpm), ("tpm", tpm)) if v is not None}
            if cluster is not None:
                from naturelens.scale.describe import describe_on_ray

                with photo_progress("describe on Ray", len(ids) - len(done)) as advance:
                    report = describe_on_ray(
                        ws,
                        model,
                        cluster,
                        base_url=base_url,
                        prompt=prompt,
                        photo_ids=ids,
                        max_tokens=max_tokens,
                        progress=advance,
                        **limits,
                    )
                _print_report(ws, report, show)
                return
            vlm = load_vlm(model, base_url=base_url, **limits)
        except (CardError, PromptError, VLMError, OSError, ValueError) as exc:
            fail(exc)
        with photo_progress("describe", len(ids)) as advance:
            report = describe_photos(
                ws,
                model,
                prompt=prompt,
                photo_ids=ids,
                batch_size=batch_size,
                max_tokens=max_tokens,
                progress=advance,
                vlm=vlm,
            )
        _print_report(ws, report, show)
        if getattr(vlm, "precision", None):  # a local model's, and why
            console.print(f"precision: {vlm.precision.describe()}", highlight=False)


@app.command()
def tag(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    top_k: int = typer.Option(5, min=1, max=1000, help="ImageNet classes kept per photo."),
    batch_size: int = typer.Option(32, min=1, help="Photos per forward pass."),
    show: int = typer.Option(0, min=0, help="Print this many photos' tags afterwards."),
    ray: str = RAY,
    ray_workers: int = RAY_WORKERS,
    ray_gpus: float = RAY_GPUS,
    ray_window: int = RAY_WINDOW,
) -> None:
    """Tag every photo with its top ImageNet classes (offline EfficientNet-Lite0; resumable)."""
    from naturelens.text.describe import tag_photos
    from naturelens.text.tagger import Tagger

    with open_workspace(workspace) as ws:
        ids = ws.photo_ids()
        cluster = ray_options(ray, ray_workers, ray_gpus, batch_size, ray_window)
        if cluster is not None:
            from naturelens.scale.describe import tag_on_ray

            try:
                with photo_progress("tag on Ray", len(ids)) as advance:
                    report = tag_on_ray(ws, cluster, ids, top_k=top_k, progress=advance)
            except ValueError as exc:
                fail(str(exc))
            _print_report(ws, report, show)
            return
        try:
            tagger = Tagger(top_k=top_k, batch_size=batch_size)
        except (ImportError, ValueError) as exc:
            fail(exc)
        with photo_progress("tag", len(ids)) as advance:
            report = tag_photos(ws, ids, tagger=tagger, progress=advance)
        _print_report(ws, report, show)
