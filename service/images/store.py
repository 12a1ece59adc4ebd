"""Images stored once by sha256, validated before anything decodes them in full.

Bytes live in the SQLite store (`images` table), exactly as uploaded; a small in-memory LRU
keeps recently decoded RGB images. Validation order matters for safety: size of the file,
then the pixel count read from the header (before decoding: a decompression bomb is a 413,
not an OOM), then `verify()`, then a full `load()` in a second open, which is what catches a
truncated file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import threading
import warnings
from collections import OrderedDict

from PIL import Image, UnidentifiedImageError

from selfreward_vlm.core.schemas import ImageRef
from selfreward_vlm.service.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from selfreward_vlm.service.images.urls import UrlPolicy, load_image_url
from selfreward_vlm.service.store import ImageRow, Store

IMAGE_ID_RE = re.compile(r"^[0-9a-f]{64}$")


class InvalidImageError(InvalidRequestError):
    """The bytes are not an image Pillow can decode completely."""

    type = "invalid_image"


class ImageNotFoundError(NotFoundError):
    """No image with this id here: never uploaded, or uploaded to another replica (clients
    re-upload the bytes on this type and retry)."""

    type = "image_not_found"


class ImageTooLargeError(PayloadTooLargeError):
    """The image file or its pixel count is over the service's limit."""

    type = "image_too_large"


class ImageStore:
    """Validated, deduplicated image storage with a decoded-image LRU; thread-safe.

    Decoded images handed out are shared with the cache: treat them as read-only.
    """

    url_policy = UrlPolicy()  # what ImageRef.url may fetch; open_state sets the operator's

    def __init__(self, store: Store, max_bytes: int, max_pixels: int, cache_size: int = 64) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ writing

    def put(self, data: bytes, field: str = "file") -> tuple[str, int, int]:
        """Validate and store image bytes; returns `(id, width, height)`. Idempotent."""
        if len(data) > self.max_bytes:
            raise ImageTooLargeError(
                f"image is {len(data)} bytes; the limit is {self.max_bytes}", field=field
            )
        image_id = hashlib.sha256(data).hexdigest()
        known = self.store.image_size(image_id)
        if known is not None:
            return image_id, known[0], known[1]
        image, fmt = self._decode(data, field)
        self.store.put_image(ImageRow(image_id, data, image.width, image.height, fmt))
        self._remember(image_id, image)
        return image_id, image.width, image.height

    def _decode(self, data: bytes, field: str) -> tuple[Image.Image, str]:
        """Check the header's pixel count, verify, then fully decode to RGB."""
        if not data:
            raise InvalidImageError("empty image", field=field)
        try:
            with warnings.catch_warnings():
                # Our own limit below is the guard; Pillow's warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as probe:
                    width, height = probe.size
                    fmt = probe.format or "UNKNOWN"
                    self._check_pixels(width, height, field)
                    probe.verify()
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    rgb = to_rgb(im)
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"image has too many pixels: {e}", field=field) from None
        except ImageTooLargeError:
            raise
        except UnidentifiedImageError:
            raise InvalidImageError("not an image Pillow can read", field=field) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InvalidImageError(f"broken or truncated image: {e}", field=field) from None
        return rgb, fmt

    def _check_pixels(self, width: int, height: int, field: str) -> None:
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"image has no pixels ({width}x{height})", field=field)
        if width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels; the limit is "
                f"{self.max_pixels}",
                field=field,
            )

    # ------------------------------------------------------------------ reading

    def get(self, image_id: str, field: str = "image.id") -> Image.Image:
        """The decoded RGB image with this id (404 naming `field` if unknown)."""
        with self._lock:
            cached = self._cache.get(image_id)
            if cached is not None:
                self._cache.move_to_end(image_id)
                self.hits += 1
                return cached
            self.misses += 1
        row = self.get_row(image_id, field)
        image, _ = self._decode(row.data, field)
        self._remember(image_id, image)
        return image

    def get_row(self, image_id: str, field: str = "id") -> ImageRow:
        """The stored bytes, size and format of an image (404 naming `field` if unknown)."""
        row = self.store.get_image(image_id) if IMAGE_ID_RE.match(image_id) else None
        if row is None:
            raise ImageNotFoundError(
                f"no image with id {image_id!r}; upload it with POST /v1/images", field=field
            )
        return row

    def get_bytes(self, image_id: str, field: str = "id") -> bytes:
        """The image file bytes exactly as uploaded."""
        return self.get_row(image_id, field).data

    def resolve(
        self, ref: ImageRef | None, field: str = "image"
    ) -> tuple[str | None, Image.Image | None]:
        """Turn a request's image reference into `(id, RGB image)`; `(None, None)` for none.

        Inline base64 images are validated and stored like uploads, so their id can be reused
        in later requests and keys the engine's caches. Blocking: call from a worker thread.
        """
        if ref is None:
            return None, None
        if ref.id is not None:
            return ref.id, self.get(ref.id, field=f"{field}.id")
        if ref.url is not None:  # data: URI, or http(s) within the operator's URL policy
            data = load_image_url(ref.url, self.url_policy, field=f"{field}.url")
            image_id, _, _ = self.put(data, field=f"{field}.url")
            return image_id, self.get(image_id, field=f"{field}.url")
        b64_field = f"{field}.base64"
        text = "".join((ref.base64 or "").split())
        if text.startswith("data:") and "," in text:  # a data URL: keep only the payload
            text = text.split(",", 1)[1]
        if len(text) > 4 * (self.max_bytes // 3 + 1) + 4:
            raise ImageTooLargeError(
                f"base64 image is over the {self.max_bytes}-byte image limit", field=b64_field
            )
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError("image.base64 is not valid base64", field=b64_field) from None
        image_id, _, _ = self.put(data, field=b64_field)
        return image_id, self.get(image_id, field=b64_field)

    def _remember(self, image_id: str, image: Image.Image) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            self._cache[image_id] = image
            self._cache.move_to_end(image_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)


# Modes whose samples are wider than 8 bits: `convert("RGB")` would clip them (a 16-bit grey of
# 40000 came out white), so they are scaled to 0..255 first.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def to_rgb(im: Image.Image) -> Image.Image:
    """The first frame of `im` as 8-bit RGB, whatever its mode: palette, grey+alpha, CMYK (by
    Pillow's conversion), 16-bit and 32-bit grey scaled (not clipped), float grey in [0, 1]
    scaled by 255. Alpha is dropped; an animation's later frames are not decoded."""
    if im.mode not in _WIDE_MODES:
        return im.convert("RGB")
    wide = im.convert("F")  # exact for 16-bit and float samples
    high = float(wide.getextrema()[1])  # type: ignore[arg-type]  # (low, high) for mode F
    if im.mode == "F" and high <= 1.0:
        scale = 255.0  # float images hold intensities in [0, 1]
    elif high > 255 or im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0  # 16-bit data (also in a 32-bit "I" image)
    else:
        scale = 1.0
    grey = wide.point(lambda v: v * scale)  # F -> L below rounds and clips to 0..255
    return grey.convert("L").convert("RGB")


def media_type(fmt: str) -> str:
    """The MIME type of a Pillow format name (`application/octet-stream` if unknown)."""
    Image.init()
    return Image.MIME.get(fmt.upper(), "application/octet-stream")
