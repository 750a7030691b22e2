"""Safe photo decoding: every file either becomes an RGB image or a stated reason.

Social-media exports contain truncated downloads, HTML error pages saved as ``.jpg``,
CMYK scans, 16-bit PNGs, animated GIFs and the odd decompression bomb. Decoding here
never raises for a bad photo: callers get :class:`PhotoDecodeError` with a short,
groupable reason.
"""

from __future__ import annotations

import io
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from naturelens.errors import PhotoError

if TYPE_CHECKING:
    from naturelens.sources.budget import DecodeBudget

# Refuse images above this many pixels (about 16k x 11k) before decoding them.
MAX_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

try:  # HEIC/HEIF from phones, when the optional plugin is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_PLUGIN = True
except ImportError:  # pragma: no cover - optional
    HEIF_PLUGIN = False

# ISO base media brands of HEIC/HEIF/AVIF stills (bytes 8-12 after "ftyp").
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"}


# The reason recorded when a photo's file could not be read at all (gone, no permission):
# unlike a broken image, it may read once the file is back.
UNREADABLE = "file not readable"


class PhotoDecodeError(PhotoError):
    """A photo cannot be decoded."""


@dataclass
class PhotoInfo:
    width: int
    height: int
    format: str
    lat: float | None = None
    lon: float | None = None
    taken_at: datetime | None = None


def _open(data: bytes) -> Image.Image:
    if not data:
        raise PhotoDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PhotoDecodeError("too many pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if is_heif(data) and not HEIF_PLUGIN:
            raise PhotoDecodeError(
                "HEIC needs a plugin", "install it with `pip install naturelens[heif]`"
            ) from exc
        raise PhotoDecodeError("not an image") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad photo
        raise PhotoDecodeError("unreadable image", f"{type(exc).__name__}: {exc}") from exc
    if img.width * img.height > MAX_PIXELS:
        raise PhotoDecodeError("too many pixels", f"{img.width}x{img.height}")
    return img


def is_heif(data: bytes) -> bool:
    """Whether ``data`` starts like a HEIC/HEIF (or AVIF) still image."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a photo format naturelens reads."""
    if head.startswith(_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return is_heif(head)


def decode_cost(img: Image.Image, rgb_copy: bool = True) -> int:
    """About how many bytes decoding an opened (not yet decoded) image holds at its peak.

    Read from the header alone: the size and mode it decodes to (after
    :meth:`~PIL.Image.Image.draft`, the reduced size). Measured with Pillow: decoding
    holds about twice the pixels (Pillow keeps three- and four-band images at 4 bytes a
    pixel); with ``rgb_copy``, :func:`decode_photo`'s conversion adds an RGB image for
    modes other than RGB, the RGBA copy, background and blend for transparent ones, and
    float64 arrays for 16-bit and float ones.
    """
    pixels = img.width * img.height
    mode = img.mode
    if mode.startswith("I;16"):
        stored = 2
    elif mode in ("I", "F") or len(img.getbands()) > 1:
        stored = 4
    else:
        stored = 1
    extra = 0
    if rgb_copy:
        if mode.startswith("I;16") or mode in ("I", "F"):
            extra = 24  # float64 scaling to 8 bits, then the RGB image
        elif mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            extra = 16  # RGBA copy, white background, the blend, the RGB image
        elif mode != "RGB":
            extra = 4
    return pixels * (2 * stored + extra)


def _to_rgb(img: Image.Image) -> Image.Image:
    # In place: the image is ours, and a copy of a large photo costs its size again.
    ImageOps.exif_transpose(img, in_place=True)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit: scale to 8 bits rather than clip.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.max() > 255 else 255.0
        img = Image.fromarray((arr / top * 255).round().astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = (arr.max() - arr.min()) or 1.0
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _load(img: Image.Image) -> None:
    """Decode the pixels (the first frame of an animation); failures become reasons."""
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
    except OSError as exc:
        msg = str(exc).lower()
        reason = "truncated image" if "truncat" in msg or "broken" in msg else "unreadable image"
        raise PhotoDecodeError(reason, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001
        raise PhotoDecodeError("unreadable image", f"{type(exc).__name__}: {exc}") from exc


def decode_photo(data: bytes, max_side: int | None = None) -> Image.Image:
    """Decode bytes to an RGB image with EXIF orientation applied.

    Parameters
    ----------
    data
        The file's bytes.
    max_side
        When given, JPEG decoding uses Pillow's draft mode to decode at a reduced
        scale no smaller than this many pixels on the short side (much faster for
        large photos), and the result is downscaled so its short side is at most
        ``2 * max_side``.

    Raises
    ------
    PhotoDecodeError
        For empty, truncated, non-image or oversized files.
    """
    img = _open(data)
    if max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))
    _load(img)
    try:
        out = _to_rgb(img)
    except Exception as exc:  # noqa: BLE001
        raise PhotoDecodeError("unreadable image", f"{type(exc).__name__}: {exc}") from exc
    if max_side and min(out.size) > 2 * max_side:
        scale = 2 * max_side / min(out.size)
        out = out.resize(
            (max(1, round(out.width * scale)), max(1, round(out.height * scale))),
            Image.Resampling.BILINEAR,
        )
    return out


def inspect_photo(data: bytes, budget: DecodeBudget | None = None) -> PhotoInfo:
    """Decode ``data`` once (to prove it is readable) and read its size and metadata.

    A JPEG is decoded in draft mode at 1/8 scale. libjpeg still reads and entropy-decodes
    the whole compressed stream (every scan of a progressive file, every block's
    coefficients) and Pillow still fails on a file that ends early, so a truncated or
    corrupt stream is caught as with a full decode; what is skipped is the inverse DCT
    and colour conversion at full size, which cannot fail on a stream that decoded.
    It does not prove that a full-size decode fits in memory (the pixel limit guards
    that) and, like a full decode, it cannot see damage that still decodes (flipped
    bits inside the entropy-coded data). Other formats are decoded in full.

    Parameters
    ----------
    data
        The file's bytes.
    budget
        When given, the decode first reserves its size (:func:`decode_cost`, from the
        header) from this budget shared with other processes, and waits for room.

    Raises
    ------
    PhotoDecodeError
        When the photo cannot be decoded.
    """
    src = _open(data)
    info = PhotoInfo(width=0, height=0, format=(src.format or "").upper())
    try:
        exif = src.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF is not a broken photo
        exif = None
    if info.format == "JPEG":
        width, height = src.size  # as declared; draft() shrinks .size to the decoded scale
        src.draft(src.mode, (1, 1))
        with _reserved(budget, decode_cost(src, rgb_copy=False)):
            _load(src)
        # EXIF orientations 5-8 turn the photo on its side: the shown size is swapped.
        if exif and exif.get(0x0112) in (5, 6, 7, 8):
            width, height = height, width
        info.width, info.height = width, height
    else:
        with _reserved(budget, decode_cost(src)):
            img = decode_photo(data)
            info.width, info.height = img.size
            del img  # freed before the reservation ends
    if exif:
        info.lat, info.lon = _exif_gps(exif)
        info.taken_at = _exif_time(exif)
    return info


def _reserved(budget: DecodeBudget | None, amount: int) -> AbstractContextManager:
    return budget.hold(amount) if budget is not None else nullcontext()


def _ratio(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        num, den = value
        return float(num) / float(den)


def _exif_gps(exif) -> tuple[float | None, float | None]:
    try:
        gps = exif.get_ifd(0x8825)
    except Exception:  # noqa: BLE001
        return None, None
    try:
        lat_ref, lat, lon_ref, lon = gps.get(1), gps.get(2), gps.get(3), gps.get(4)
        if not lat or not lon:
            return None, None

        def degrees(dms) -> float:
            d, m, s = (_ratio(v) for v in dms)
            return d + m / 60 + s / 3600

        la, lo = degrees(lat), degrees(lon)
        if str(lat_ref).upper().startswith("S"):
            la = -la
        if str(lon_ref).upper().startswith("W"):
            lo = -lo
        if not (-90 <= la <= 90 and -180 <= lo <= 180):
            return None, None
        return round(la, 7), round(lo, 7)
    except Exception:  # noqa: BLE001
        return None, None


def _exif_time(exif) -> datetime | None:
    raw = None
    try:
        raw = exif.get_ifd(0x8769).get(36867)  # DateTimeOriginal
    except Exception:  # noqa: BLE001
        pass
    raw = raw or exif.get(306)  # DateTime
    if not raw:
        return None
    try:
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def load_photo(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Read and decode a photo file (see :func:`decode_photo`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PhotoDecodeError(UNREADABLE, str(exc)) from exc
    return decode_photo(data, max_side=max_side)
