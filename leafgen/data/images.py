"""Safe image ids and image decoding.

Image ids come from user CSVs and become file names, so they are checked before any path is built: an id
is a plain file name and the resolved path must stay inside the images folder. Decoding applies EXIF
orientation, converts any mode to RGB and refuses decompression bombs.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from leafgen.errors import LeafgenError

IMAGE_SUFFIX = ".jpg"
DEFAULT_MAX_PIXELS = 60_000_000
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")


def unsafe_id_reason(image_id: str) -> str | None:
    """Why ``image_id`` cannot name a file inside the images folder, or None if it can."""
    if not image_id:
        return "image_id is empty"
    if "/" in image_id or "\\" in image_id or "\x00" in image_id:
        return f"image_id {image_id!r} contains a path separator or NUL; ids must be plain file names"
    if not _SAFE_ID.fullmatch(image_id):
        return (
            f"image_id {image_id!r} is not a plain file name (start with a letter or digit, then letters, "
            "digits, '_', '.' or '-')"
        )
    return None


def image_path(images_dir: Path, image_id: str, suffix: str = IMAGE_SUFFIX) -> Path:
    """``images_dir/<image_id><suffix>``, refusing ids that would escape ``images_dir``."""
    reason = unsafe_id_reason(image_id)
    if reason:
        raise ValueError(reason)
    path = images_dir / f"{image_id}{suffix}"
    # A symlinked file may point anywhere; require the resolved file to stay under the folder.
    if path.exists() and not path.resolve().is_relative_to(images_dir.resolve()):
        raise ValueError(f"{path} resolves outside {images_dir}")
    return path


def load_rgb(path: Path, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Fully decode ``path`` as an upright RGB image; raises ``ValueError`` with a reason if it cannot.

    ``draft`` (width, height): the caller will shrink the image to about this size, so a JPEG may be
    decoded at a reduced scale (DCT scaling), several times faster for Kaggle's 2048px photos.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ValueError(
                        f"{w}x{h} = {w * h} pixels exceeds data.max_image_pixels={max_pixels} "
                        "(decompression-bomb guard)"
                    )
                if draft is not None:
                    # The EXIF rotation comes later, so allow for either orientation.
                    side = max(draft)
                    img.draft("RGB", (side, side))
                img.load()
                img = ImageOps.exif_transpose(img)
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"decompression-bomb guard: {exc}") from None
    except FileNotFoundError:
        raise ValueError("image file is missing") from None
    except (OSError, SyntaxError, Image.UnidentifiedImageError) as exc:
        # PIL reports truncated and corrupt files as OSError/SyntaxError.
        raise ValueError(f"unreadable or truncated image: {exc}") from None


def open_rgb(
    path: Path, what: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Image.Image:
    """``load_rgb`` for one file outside dataset validation: a bad file is a ``LeafgenError`` naming it and
    ``what`` it was needed for, instead of a ``ValueError`` for a problem list."""
    try:
        return load_rgb(Path(path), max_pixels, draft)
    except ValueError as exc:
        raise LeafgenError(f"{path}: cannot read {what}: {exc}") from None


def image_problem(path: Path, max_pixels: int) -> str | None:
    """None if ``path`` decodes cleanly, else why not."""
    try:
        load_rgb(path, max_pixels)
    except ValueError as exc:
        return str(exc)
    return None
