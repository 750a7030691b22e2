"""The demo: a workspace of real sample photos that installed packages ship, end to end.

The photos come from scikit-image, scikit-learn and matplotlib. A few of them clearly
belong to a FLIPS class and carry that class as a gold label, so evaluation has
something to measure. Their coordinates, owners and dates are illustrative, made up so
the map and photo-user-days in the report have something to show.
"""

from __future__ import annotations

import csv
import shutil
from importlib import util
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from naturelens.workspace.core import Workspace

# (package, file inside it, FLIPS class or "", title, tags)
SAMPLES = [
    ("skimage", "data/chelsea.png", "fauna_flora", "Chelsea the cat", "cat,pet"),
    ("skimage", "data/coffee.png", "gastronomy", "Morning coffee", "coffee,cup"),
    ("skimage", "data/horse.png", "fauna_flora", "Horse silhouette", "horse"),
    ("skimage", "data/grass.png", "nature", "Grass", "grass,meadow"),
    ("skimage", "data/gravel.png", "nature", "Gravel path", "gravel,trail"),
    ("skimage", "data/astronaut.png", "", "Astronaut portrait", "portrait"),
    ("skimage", "data/rocket.jpg", "", "Rocket launch", "rocket"),
    ("skimage", "data/motorcycle_left.png", "", "Motorcycle", "motorcycle"),
    ("skimage", "data/hubble_deep_field.jpg", "", "Night sky", "stars,sky"),
    ("skimage", "data/brick.png", "", "Brick wall", "wall"),
    ("skimage", "data/camera.png", "", "Photographer", "camera"),
    ("skimage", "data/coins.png", "", "Old coins", "coins,museum"),
    ("sklearn", "datasets/images/china.jpg", "cultural_religious", "Temple", "temple,heritage"),
    ("sklearn", "datasets/images/flower.jpg", "fauna_flora", "Flower", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "", "Portrait", "portrait"),
]


def _package_dir(name: str) -> Path | None:
    spec = util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def collect_sample_photos(folder: Path) -> Path:
    """Copy the sample photos into ``folder`` and write ``manifest.csv``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (package, rel, label, title, tags) in enumerate(SAMPLES):
        root = _package_dir(package)
        src = root / rel if root else None
        if src is None or not src.exists():
            continue  # a package's layout changed; the demo works with what is there
        target = folder / f"{package}-{src.name}"
        if not target.exists():
            shutil.copy(src, target)
        rows.append(
            {
                "id": f"{package}-{src.stem}",
                "path": target.name,
                "label": label,
                "title": title,
                "tags": tags,
                "owner": f"walker{i % 4}",
                "taken_at": f"2024-05-{1 + i % 6:02d} 1{i % 9}:00:00",
                # Illustrative points around the Sierra de Guadarrama National Park.
                "lat": round(40.78 + 0.02 * (i % 5), 5),
                "lon": round(-3.98 + 0.025 * (i // 5), 5),
            }
        )
    if not rows:
        raise RuntimeError(
            "no sample photos found: install scikit-image, scikit-learn or matplotlib"
        )
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_demo(root: Path, console: Console | None = None) -> Workspace:
    """Build (or reuse) the demo workspace at ``root`` and run the pipeline on it."""
    console = console or Console()
    root = Path(root)
    manifest = collect_sample_photos(root / "sample-photos")
    ws = (
        Workspace.open(root)
        if (root / "workspace.yaml").exists()
        else Workspace.create(root, "flips")
    )
    report = ws.ingest([manifest])
    # Styles are ours (markup on), text from data is escaped: the CLI's console reads no
    # markup by default, so that a photo name can never restyle or break the output.
    console.print(
        f"[bold]Demo workspace[/] {escape(str(root))}: {report.added} new photos, "
        f"{report.skipped} already there, {report.failed} failures.",
        markup=True,
    )
    status = ws.status()
    table = Table(
        "class", "gold labels", title=f"{status['photos']} photos, taxonomy {status['taxonomy']}"
    )
    for cls, n in status["labelled_per_class"].items():
        table.add_row(cls, str(n))
    console.print(table)

    # Classification: the offline pipeline (EfficientNet-Lite0 tags -> MiniLM zero-shot).
    _classify_offline(ws, console)

    # Report: galleries, scores and map of the demo run, written into the workspace.
    _write_report(ws, console)
    return ws


def _write_report(ws: Workspace, console: Console) -> Path:
    """Write the HTML report into the demo workspace and print where it is."""
    from naturelens.report.html import build_report

    path = build_report(ws, ws.root / "report.html")
    console.print(
        f"Report: [bold]{escape(str(path.resolve()))}[/] (open it in a browser)", markup=True
    )
    return path


def _classify_offline(ws: Workspace, console: Console) -> str:
    """Run the offline label-free pipeline and print each photo's class and top tags."""
    from naturelens.methods.offline import pipeline_results, run_offline_pipeline

    console.print(
        "Classifying with the offline pipeline: EfficientNet-Lite0 tags each photo, "
        "MiniLM matches the tags to the class definitions (no labels, no GPU, no internet)."
    )
    run_id = run_offline_pipeline(ws)
    rows = pipeline_results(ws, run_id)
    console.print(
        f"[bold]run {escape(run_id)}[/]: photo -> class (confidence), gold label, top tags",
        markup=True,
    )
    correct = labelled = 0
    for r in sorted(rows, key=lambda r: r["photo"]):
        cls = r["class_id"] if r["status"] == "ok" else f"({r['status']}: {r['detail']})"
        # A tag is an ImageNet class such as "espresso" or "Mexican hairless, xoloitzcuintli".
        tags = "; ".join(name.split(",")[0] for name, _ in r["tags"][:3])
        conf = f" ({r['confidence']:.2f})" if r["confidence"] is not None else ""
        gold = ""
        if r["label"]:
            labelled += 1
            correct += r["label"] == r["class_id"]
            gold = (
                " [green]✓[/]"
                if r["label"] == r["class_id"]
                else f" [red]✗ gold {escape(r['label'])}[/]"
            )
        console.print(
            f"  {escape(r['photo'])} -> [bold]{escape(cls)}[/]{conf}{gold}  [dim]{escape(tags)}[/]",
            highlight=False,
            markup=True,
        )
    if labelled:
        console.print(f"{correct} of {labelled} gold-labelled photos classified correctly.")
    return run_id
