"""Start-up of small commands: an earlier revision's code and this one, side by side.

The baseline is the package as it was at ``--baseline`` (extracted with ``git archive``);
both run the same commands on the same workspace, alternately, each in a fresh
interpreter, and the median wall time and CPU time of ``--repeats`` runs are reported.
Commands: ``--help``, ``status``, ``runs list``,
``taxonomy list``, ``export`` of a stored run, and a probe on cached embeddings
(``classify --method probe --shots 4 --fresh`` on 48 photos whose vectors are stored).

By default the commands run as on a user's machine: Python writes its bytecode cache, and
each command runs once per side before the timed runs (that first run compiles the
modules and fills the per-machine caches). ``--no-bytecode`` sets
``PYTHONDONTWRITEBYTECODE`` instead, so every run compiles every module it imports.

    python benchmarks/startup.py [--baseline main] [--repeats 5] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from naturelens.cli import main; sys.argv[0] = 'naturelens'; main()"


def extract(revision: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def prepare(root: Path) -> tuple[Path, str]:
    """A workspace of 48 labelled photos with stored embeddings and one finished run."""
    from naturelens.models.embedding import embed_photos
    from naturelens.testing.synthetic import make_photo_set
    from naturelens.testing.tiny_models import tiny_model
    from naturelens.workspace.core import Prediction, Workspace

    make_photo_set(root / "photos", "flips", per_class=8, size=64)
    ws = Workspace.create(root / "ws", "flips")
    ws.ingest([root / "photos"])
    model = str(tiny_model("dinov2", root / "tiny"))
    embed_photos(ws, model, precision="fp32")
    run_id, _ = ws.start_run("probe", {"model": model})
    ws.write_predictions(run_id, [Prediction(p, "nature", 0.9) for p in ws.photo_ids()])
    ws.finish_run(run_id)
    ws.close()
    return root / "ws", model


def timed(src: Path, args: list[str], bytecode: bool) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one command in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(src))
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI, *args], env=env, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, (args, proc.stderr.decode()[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-bytecode", action="store_true", help="compile every module on every run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = extract(args.baseline, root / "baseline")
        ours = REPO / "src"
        ws, model = prepare(root)
        out = root / "export.csv"
        commands = {
            "--help": ["--help"],
            "status": ["status", str(ws)],
            "runs list": ["runs", "list", str(ws)],
            "taxonomy list": ["taxonomy", "list"],
            "export": ["export", str(ws), "-o", str(out)],
            "probe on cached embeddings": [
                "classify",
                str(ws),
                "-m",
                "probe",
                "--model",
                model,
                "--shots",
                "4",
                "--fresh",
            ],
        }
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
            capture_output=True,
            text=True,
        ).stdout.strip()
        bytecode = not args.no_bytecode
        condition = "bytecode cached, one untimed run first" if bytecode else "no bytecode cache"
        print(
            f"baseline {args.baseline} ({sha}) vs this checkout; median of {args.repeats} runs;"
            f" {condition}"
        )
        print(
            f"{'command':28} {'baseline wall/cpu s':>20} {'ours wall/cpu s':>18} {'wall ratio':>10}"
        )
        for name, cli in commands.items():
            sides = {"baseline": [], "ours": []}
            if bytecode:
                for src in (baseline, ours):
                    timed(src, cli, bytecode)
            for _ in range(args.repeats):
                for side, src in (("baseline", baseline), ("ours", ours)):
                    sides[side].append(timed(src, cli, bytecode))
            med = {
                side: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
                for side, r in sides.items()
                if r
            }
            ours_w, ours_c = med["ours"]
            if "baseline" in med:
                base_w, base_c = med["baseline"]
                print(
                    f"{name:28} {base_w:>10.2f} / {base_c:<7.2f} {ours_w:>8.2f} / {ours_c:<7.2f}"
                    f" {base_w / ours_w:>9.2f}x"
                )
            else:
                print(f"{name:28} {'-':>20} {ours_w:>8.2f} / {ours_c:<7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
