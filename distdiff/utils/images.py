"""Reading one image file as the RGB picture it shows, or one clear error naming the file.

`open_image` applies the EXIF orientation, scales 16-bit, 32-bit and float images to 8 bits
instead of clipping them, composites transparency onto white, converts CMYK and palettes, and
turns every way a file can be unreadable (missing, dangling link, empty, truncated, corrupt,
too large to decode safely) into an `ImageError` whose message is one line naming the file.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from distdiff.errors import UserError

# PIL's own default (about 89 Mpixels, 0.25 GiB as 8-bit RGB): larger files are refused as possible
# decompression bombs. PIL only warns between 1x and 2x of it; we refuse from 1x, with one line.
MAX_PIXELS = 89_478_485
# Transparent pixels are shown on white, the background image viewers and browsers use.
BACKGROUND = (255, 255, 255)
# What PIL raises for a file it cannot decode (UnidentifiedImageError and truncation are OSErrors).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
# torch's DataLoader re-raises a worker's exception as `type("Caught X in DataLoader worker ...<traceback>")`.
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


class ImageError(UserError):
    """An image file that cannot be read; the message is one line naming the file."""

    def __init__(self, message: str):
        super().__init__(unwrap_worker_message(message))


def unwrap_worker_message(message: str) -> str:
    """The original one-line message inside a DataLoader worker's re-raised exception text (else `message`)."""
    if not _WORKER_PREFIX.match(message):
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if re.match(r"^[\w.]+: ", last) else last


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float single-channel images scaled (not clipped) to mode L."""
    values = np.asarray(image).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0  # floats in [0, 1] are intensities
    elif image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif image.mode == "I" and low >= 0 and high < 2 ** 16:
        low, high = 0.0, (255.0 if high < 2 ** 8 else 65535.0)  # 8- or 16-bit data held in 32 bits
    # Anything else (negative, above 16 bits, floats outside [0, 1]) is stretched from its own range.
    scaled = (np.clip(values, low, high) - low) / max(high - low, 1e-12) * 255.0
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info or image.mode in ("PA", "LA", "La", "RGBa", "RGBA"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's conversions


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def open_image(path: str | Path) -> Image.Image:
    """The image at `path` as an RGB PIL image, upright and 8-bit; raises ImageError naming the file."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageError(f"cannot read image {path}: it is a symbolic link to {path.readlink()}, which does "
                         f"not exist. Fix the link or remove it.")
    if path.is_file() and path.stat().st_size == 0:
        raise ImageError(f"cannot read image {path}: the file is empty (0 bytes). Replace or remove it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(_too_large(path, str(image.width * image.height)))
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # PIL's check came first
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError(_too_large(path, found.group(1) if found else "too many")) from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot read image {path}: {_first_line(err)}. The file is missing, truncated or "
                         f"not an image; replace or remove it.") from err


def _too_large(path: Path, size: str) -> str:
    return (f"cannot read image {path}: {size} pixels is more than the {MAX_PIXELS} allowed (a guard against "
            f"decompression bombs). Downscale it or remove it.")
