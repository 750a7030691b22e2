"""A corpus of the bad and awkward inputs that real photo exports contain.

:func:`make_bad_corpus` writes it to a folder and says what a correct ingest must
record: which references fail and why, and which photos must be present exactly once.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from naturelens.testing.synthetic import synthetic_photo


@dataclass
class BadCorpus:
    folder: Path  # photos and broken files, ingest as a folder
    manifest: Path  # a manifest with bad rows
    urls: Path  # a URL list with a URL that does not answer
    good: dict[str, Path] = field(default_factory=dict)  # name -> file of each good photo
    failures: dict[str, str] = field(default_factory=dict)  # reference -> expected reason
    duplicate_of: dict[str, str] = field(default_factory=dict)  # copy -> original

    @property
    def sources(self) -> list[Path]:
        return [self.folder, self.manifest, self.urls]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exif_rotated_jpeg(path: Path) -> None:
    img = synthetic_photo(3, 1, size=64).crop((0, 0, 64, 40))  # landscape 64x40
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    gps = {1: "N", 2: (40.0, 25.0, 30.0), 3: "W", 4: (3.0, 42.0, 0.0)}
    exif[0x8825] = gps
    exif[0x8769] = {36867: "2021:06:15 10:30:00"}
    img.save(path, exif=exif, quality=90)


def make_bad_corpus(root: str | Path) -> BadCorpus:
    """Write the corpus under ``root`` and describe the expected ingest result."""
    root = Path(root)
    folder = root / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = BadCorpus(folder=folder, manifest=root / "manifest.csv", urls=root / "urls.txt")

    good = synthetic_photo(0, 42, size=64)
    good.save(folder / "good.jpg", quality=90)
    corpus.good["good"] = folder / "good.jpg"
    shutil.copy(folder / "good.jpg", folder / "copy of good.jpg")
    corpus.duplicate_of[str(folder / "copy of good.jpg")] = str(folder / "good.jpg")

    buf = io.BytesIO()
    synthetic_photo(1, 7, size=128).save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    corpus.failures[str(folder / "truncated.jpg")] = "truncated image"
    (folder / "empty.jpg").write_bytes(b"")
    corpus.failures[str(folder / "empty.jpg")] = "empty file"
    (folder / "notes.jpg").write_text("<html>404 Not Found</html>\n", encoding="utf-8")
    corpus.failures[str(folder / "notes.jpg")] = "not an image"
    # 20,000 x 20,000 pixels in a few kilobytes: must be refused before decoding.
    Image.new("1", (20_000, 20_000)).save(folder / "bomb.png", optimize=True)
    corpus.failures[str(folder / "bomb.png")] = "too many pixels"

    rgba = synthetic_photo(2, 3, size=48).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((48, 48)))
    rgba.save(folder / "alpha.png")
    synthetic_photo(4, 5, size=48).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    deep = Image.linear_gradient("L").resize((48, 48)).point(lambda v: v * 257, "I")
    deep.convert("I;16").save(folder / "sixteen.png")
    synthetic_photo(5, 9, size=48).convert("P", palette=Image.Palette.ADAPTIVE).save(
        folder / "palette.gif"
    )
    frames = [synthetic_photo(i, 11, size=48).convert("P") for i in range(3)]
    frames[0].save(
        folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    _exif_rotated_jpeg(folder / "rotated.jpg")
    odd = folder / "dir with spaces"
    odd.mkdir(exist_ok=True)
    synthetic_photo(3, 13, size=48).save(odd / "ñandú café.jpg", quality=90)
    for name in [
        "alpha.png",
        "cmyk.jpg",
        "sixteen.png",
        "palette.gif",
        "animated.gif",
        "rotated.jpg",
    ]:
        corpus.good[name.split(".")[0]] = folder / name
    corpus.good["spaces"] = odd / "ñandú café.jpg"

    with open(corpus.manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "lat", "lon", "title"])
        writer.writerow(["ok-1", "photos/good.jpg", "40.1", "-3.5", "A good photo"])
        writer.writerow(["missing-1", "photos/not-there.jpg", "", "", "Gone"])
        writer.writerow(["badcoord-1", "photos/alpha.png", "north", "-3.5", "Bad coordinate"])
    corpus.failures[f"{corpus.manifest.resolve()}#missing-1"] = "file not found"
    corpus.failures[f"{corpus.manifest.resolve()}#badcoord-1"] = "malformed coordinate"

    dead = f"http://127.0.0.1:{_closed_port()}/photo.jpg"
    corpus.urls.write_text(f"# a server that does not answer\n{dead}\n", encoding="utf-8")
    corpus.failures[dead] = "download failed"
    return corpus
