"""Images: the publisher's stored paths resolved by basename under a user-given root, one load status, one placeholder.

Stored image paths are the publisher's absolute paths (``/MarqoData/...``); they are never opened as
such. :class:`ImageResolver` maps them to ``image_root / basename``; the parquet layout's
:class:`~gclcore.data.parquet.ParquetImages` decodes embedded bytes instead, behind the same
:class:`ImageSource` contract. Loading never raises for a bad file: it returns the grey :func:`placeholder`
and an :class:`ImageStatus` (safe in DataLoader workers, which cannot update counters);
:meth:`ImageSource.record` counts the problem in the main process and applies the policy (raise, or keep
the placeholder); :meth:`ImageSource.warn_placeholders` tells the user how many were substituted.
Evaluation, training and exploration all go through these, so nothing is skipped silently.
"""

from __future__ import annotations

import enum
import io
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Literal

from gclcore.data.errors import DataFormatError


def image_basename(stored_path: str) -> str:
    """File name of a stored (publisher, POSIX or Windows) image path: the text after the last separator."""
    return PurePosixPath(str(stored_path).replace("\\", "/")).name


class ImageStatus(enum.IntEnum):
    """What loading one stored image path gave (an int, so DataLoader workers can return it in a tensor)."""

    OK = 0
    MISSING = 1          # no file under the image root, or no stored path at all (a missing value)
    UNREADABLE = 2       # the file exists but does not decode as an image


PLACEHOLDER_GREY = (128, 128, 128)

DEFAULT_MAX_BAD = 0.5
"""Default largest fraction of missing or unreadable images a run may go on with (``max_bad_images``)."""
MIN_SEEN = 100
"""Images seen before the fraction is checked on every record (fewer are checked at the end of a pass)."""


def placeholder(size: int = 224):
    """The grey RGB image that stands in for a missing or unreadable one."""
    from PIL import Image

    return Image.new("RGB", (size, size), PLACEHOLDER_GREY)


class ImageSource:
    """What every image resolver shares: a load status per image, counted in the main process.

    Subclasses implement :meth:`load` (never raises, safe in DataLoader workers), :meth:`where` (what an
    error message names) and :attr:`identity` (a cache key: the same identity means the same images).
    ``missing``: what :meth:`record` (and so :meth:`open`) does with an absent or undecodable image --
    ``"error"`` raises, ``"placeholder"`` keeps the grey :func:`placeholder`. Either way
    :attr:`missing_count` and :attr:`unreadable_count` count them, so nothing is skipped silently.
    ``max_bad``: the largest fraction of the images seen that may be missing or unreadable; past it (once
    :data:`MIN_SEEN` images were seen, or at :meth:`check_bad_fraction`) :meth:`record` raises: an image
    root pointing at the wrong or an empty folder fails within the first batches instead of training on
    grey squares. Resolvers are picklable (DataLoader workers get a copy; their counts stay with the main
    process's).
    """

    root: Path

    def __init__(self, missing: Literal["error", "placeholder"] = "error", placeholder_size: int = 224,
                 max_bad: float = DEFAULT_MAX_BAD):
        self.missing = missing
        self.placeholder_size = placeholder_size
        self.max_bad = max_bad
        self.seen_count = 0
        self.missing_count = 0
        self.unreadable_count = 0

    @property
    def identity(self) -> str:
        """A string that changes when the images behind the references may have changed (cache keys)."""
        return str(self.root.resolve())

    def load(self, stored) -> tuple:
        """``(RGB image, status)``; the placeholder and MISSING / UNREADABLE on failure. Never raises."""
        raise NotImplementedError

    def fingerprints(self, stored_paths: list[str]) -> list[tuple[int, int]]:
        """Per image, what changes when its content may have: here ``(0, 0)``, the contents being covered
        by :attr:`identity`; image files give ``(size, mtime_ns)`` (:class:`ImageResolver`)."""
        return [(0, 0)] * len(stored_paths)

    def where(self, stored) -> str:
        """What an error about ``stored`` names (a file, or a file and row)."""
        raise NotImplementedError

    def record(self, stored_path, status: ImageStatus | int) -> None:
        """Count the status :meth:`load` gave and apply the policy: raise if ``missing="error"`` and the image
        is bad, or if too many of the images seen so far are (``max_bad``)."""
        status = ImageStatus(int(status))
        self.seen_count += 1
        if status is ImageStatus.OK:
            return
        if status is ImageStatus.MISSING:
            self.missing_count += 1
        else:
            self.unreadable_count += 1
        if self.missing == "error":
            shown = stored_path if isinstance(stored_path, str) else ""
            raise DataFormatError(self.where(shown), f"image {status.name.lower()} (stored path {stored_path!r})",
                                  fix="check --image-root, or use missing='placeholder' to substitute and count")
        if self.seen_count >= MIN_SEEN:
            self.check_bad_fraction()

    def record_batch(self, stored_paths, statuses) -> None:
        """:meth:`record` for a batch: ``statuses`` (a tensor or sequence) aligned with ``stored_paths``."""
        for stored, status in zip(stored_paths, [int(s) for s in statuses]):
            self.record(stored, status)

    def check_bad_fraction(self) -> None:
        """Raise DataFormatError if more than ``max_bad`` of the images seen were missing or unreadable."""
        bad = self.missing_count + self.unreadable_count
        if self.seen_count and bad > self.max_bad * self.seen_count:
            raise DataFormatError(self.root, f"{bad:,} of {self.seen_count:,} images seen are missing "
                                  f"({self.missing_count:,}) or unreadable ({self.unreadable_count:,}), more than "
                                  f"the {self.max_bad:.0%} allowed (max_bad_images)",
                                  fix="check the image root is the folder the image archive was unpacked to; "
                                      "raise max_bad_images (1 = never stop) to go on with grey placeholders")

    def open(self, stored_path):
        """Decode the image as RGB; a missing or undecodable file is counted, then raises or gives the
        placeholder according to the policy."""
        image, status = self.load(stored_path)
        self.record(stored_path, status)
        return image

    def warn_placeholders(self, what: str = "used") -> None:
        """Print one warning to stderr if any image was substituted (e.g. ``what="embedded"``)."""
        if self.missing_count or self.unreadable_count:
            print(f"warning: {self.missing_count} missing and {self.unreadable_count} unreadable images under "
                  f"{self.root} were {what} as grey placeholders", file=sys.stderr)


class ImageResolver(ImageSource):
    """Resolves publisher image paths by basename under a user-given image root; never opens the stored path.

    ``missing``: the policy of :meth:`ImageSource.record` (``"error"`` raises, ``"placeholder"`` counts
    and substitutes the grey :func:`placeholder`).
    """

    def __init__(self, image_root: str | os.PathLike, missing: Literal["error", "placeholder"] = "error",
                 placeholder_size: int = 224, max_bad: float = DEFAULT_MAX_BAD):
        super().__init__(missing, placeholder_size, max_bad)
        self.root = Path(image_root)
        if not self.root.is_dir():
            raise DataFormatError(self.root, "image root is not a directory",
                                  fix="pass the folder the image archive was unpacked to")

    def resolve(self, stored_path: str) -> Path:
        """``image_root / basename(stored_path)``."""
        return self.root / image_basename(stored_path)

    def where(self, stored) -> str:
        return str(self.resolve(stored))

    def fingerprints(self, stored_paths: list[str]) -> list[tuple[int, int]]:
        """``(size, mtime_ns)`` of each resolved file, ``(-1, -1)`` when absent (one ``stat`` per image)."""
        stamps = []
        for stored in stored_paths:
            try:
                info = os.stat(self.resolve(stored))
                stamps.append((info.st_size, info.st_mtime_ns))
            except OSError:
                stamps.append((-1, -1))
        return stamps

    def load(self, stored_path) -> tuple:
        """``(RGB image, status)``: the decoded image (by content, not extension) and OK, or the placeholder
        and MISSING / UNREADABLE (a stored value that is not a string, e.g. NaN, is MISSING).

        Counts nothing and never raises: safe in worker processes; pass the status to :meth:`record`.
        """
        if not (isinstance(stored_path, str) and stored_path):  # no stored path at all (NaN, None, "")
            return placeholder(self.placeholder_size), ImageStatus.MISSING
        image, status = decode_image(self.resolve(stored_path))
        return (image, status) if image is not None else (placeholder(self.placeholder_size), status)


def decode_image(source: str | os.PathLike | bytes):
    """``(RGB image, OK)`` from a file or encoded bytes, else ``(None, MISSING)`` for an absent file and
    ``(None, UNREADABLE)`` for anything that does not decode: a truncated or foreign file, or one over
    Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, ~179 M pixels). Never raises for a
    bad file, so one bad image cannot end a run: the caller counts the status (:meth:`ImageSource.record`)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return to_rgb(img), ImageStatus.OK
    except FileNotFoundError:
        return None, ImageStatus.MISSING
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # PIL's decoders raise all of these
        return None, ImageStatus.UNREADABLE


def to_rgb(img):
    """An RGB copy of a PIL image. 16- and 32-bit integer and float greyscale (``I;16``, ``I``, ``F``: 16-bit
    PNGs and TIFFs) are scaled to 8 bits first (``convert("RGB")`` alone clips them: a 16-bit PNG would
    come out white); integer images by their bit depth (16 bits unless a value exceeds 65535), float
    images by their maximum."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = (values.max() or 1.0) if img.mode == "F" else (65535.0 if values.max() <= 65535 else 2.0 ** 32 - 1)
        img = Image.fromarray(np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def decode_image_bytes(data: bytes):
    """Decode encoded image bytes (parquet ``image.bytes``) to an RGB PIL image; PIL's errors propagate
    (:func:`decode_image` returns a status instead)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return to_rgb(img)
