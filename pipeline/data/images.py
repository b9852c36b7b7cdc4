"""Safe, fast image loading: root containment, a pixel cap, any mode to RGB.

`load_image` returns a (S, S, 3) uint8 array already resized and centre-cropped
the way the image model's own Hugging Face image processor does it (CLIP and
DINOv2: shortest side, then a centre crop; SigLIP and ViT: straight to a square;
bicubic or bilinear, as its preprocessor_config.json says), or raises `BadImage`
with a short reason that goes into `skipped.tsv`.
Normalisation happens later on whole batches (`pipeline.model.batch.pixel_values`),
so the per-image work in the DataLoader workers is decode + resize only.
"""

import errno
import functools
import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.data import fast_jpeg
from pipeline.data.preprocessor import read_preprocessor

DEFAULT_MAX_PIXELS = 100_000_000  # well above any real photo; refuses decompression bombs
MAX_FILE_BYTES = 512 << 20  # the file is read whole (hash and decode from one read): no photo is this big
_MAX_ASPECT = 64  # beyond this long/short ratio, resize only the part the centre crop keeps
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BadImage(Exception):
    """An image row that cannot be embedded; `reason` is a short snake_case tag."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageSettings:
    """How images become pixels; part of the cache fingerprint."""

    size: int = 224
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True  # JPEG decodes at reduced scale when the photo is much larger than `size`
    # How the image becomes S x S before the centre crop to `size`; the defaults are CLIP's (and every cache's
    # before image families), and `record` leaves them out, so a CLIP user's fingerprint stays as it was.
    resize: str = "shortest_edge"
    resize_to: int = None  # the shortest side (or the square's side) before the crop; None: `size`
    resample: str = "bicubic"

    @property
    def resize_side(self):
        return self.resize_to or self.size

    def record(self):
        """The settings as the fingerprint and encoders.json store them: CLIP's defaults of the later fields left
        out, so a record written before them and one written after for the same folder are equal."""
        values = asdict(self)
        for name, default in _LATER_DEFAULTS.items():
            if values[name] == default:
                del values[name]
        return values

    @classmethod
    def from_model_folder(cls, folder, **overrides):
        """Read the resize, crop, resample, mean and std from the image model folder's preprocessor_config.json
        when it has one, checked (pipeline.data.preprocessor); CLIP's defaults otherwise."""
        path = Path(folder) / "preprocessor_config.json"
        values = {}
        if path.is_file():
            values = read_preprocessor(path)
        values.update(overrides)
        return cls(**values)


_LATER_DEFAULTS = {"resize": "shortest_edge", "resize_to": None, "resample": "bicubic"}


@functools.lru_cache(maxsize=16)
def _resolved_root(root):
    """The image root, resolved once per data set and process (not once per image: 3% of a preview's time)."""
    return Path(root).resolve()


def resolve_inside(root, relative):
    """`root / relative`, refused when it (or a symlink on the way) leads outside `root`."""
    root = os.fspath(root)
    root = _resolved_root(root if os.path.isabs(root) else os.path.join(os.getcwd(), root))  # cwd may change
    if not relative:
        raise BadImage("no_image_path")
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # name too long, symlink loop, NUL byte
        raise BadImage("bad_path", f"{relative}: {error}") from None
    if not candidate.is_relative_to(root):
        raise BadImage("outside_image_root", str(relative))
    return candidate


def checked_file(root, relative):
    """The image file's path inside `root`, or `BadImage` saying why there is none."""
    path = resolve_inside(root, relative)
    try:
        if not path.exists():
            raise BadImage("missing_file", str(relative))
        if not path.is_file():
            raise BadImage("not_a_file", str(relative))
    except OSError as error:  # e.g. a path component too long, or no permission to look
        raise BadImage("bad_path", f"{relative}: {error}") from None
    return path


def load_image(root, relative, settings):
    return decode_image_bytes(_read(root, relative), settings, relative)


def load_image_and_sha256(root, relative, settings):
    """(pixels as `load_image` returns them, SHA-256 hex of the file's bytes).

    The file is read once: the hash and the decoder see the same bytes, so a
    duplicate check costs no second read (stage one stores the hash in the cache).
    Only stage one needs the hash; the other callers use `load_image` and skip it.
    """
    data = _read(root, relative)
    return decode_image_bytes(data, settings, relative), hashlib.sha256(data).hexdigest()


def _read(root, relative):
    """The image file's bytes, checked for containment and size first: one resolve, one open, one fstat.

    The resolved path is opened without following a symlink (one swapped in after the check is refused)
    and without blocking (a FIFO planted in the folder is refused as not a file, never waited on).
    """
    path = resolve_inside(root, relative)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise BadImage(_open_failure(error), f"{relative}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not_a_file", str(relative))
        if info.st_size > MAX_FILE_BYTES:
            raise BadImage("file_too_large", f"{relative}: over {MAX_FILE_BYTES >> 20} MB")
        return _read_all(fd, info.st_size)
    except OSError as error:
        raise BadImage("truncated_or_corrupt", f"{relative}: {error}") from None
    finally:
        os.close(fd)


def _open_failure(error):
    """The skip reason for a failed open, the same ones the separate exists/is_file checks gave."""
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "missing_file"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "truncated_or_corrupt"  # no permission to read it: as reading it whole used to report
    if error.errno == errno.ENXIO:
        return "not_a_file"  # a socket
    return "bad_path"  # a symlink loop (or a link swapped in), a name too long


def _read_all(fd, size):
    """Every byte of the open file; a file that grows while read is read to its end, up to the cap."""
    chunks, total = [], 0
    while True:
        chunk = os.read(fd, max(size - total, 0) + 1)  # +1: sees the end (or growth) without a second stat
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise OSError(f"grew over {MAX_FILE_BYTES >> 20} MB while read")


def decode_image_bytes(data, settings, name="image"):
    """An image file's bytes -> (S, S, 3) uint8 as `load_image` gives for that file, or `BadImage` (`name` goes
    into its detail): the one decoder of stage one, predict and serve."""
    pixels = fast_jpeg.decode(data, settings)  # None unless simplejpeg is installed and the JPEG is plain
    if pixels is not None:
        return fit(pixels, settings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image_pixels(image, settings, name=name)
    except BadImage:
        raise
    except Image.DecompressionBombError as error:
        raise BadImage("too_many_pixels", str(error)) from None
    except Image.UnidentifiedImageError:
        raise BadImage("not_an_image", str(name)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImage("truncated_or_corrupt", f"{name}: {error}") from None


def image_pixels(image, settings, name="image"):
    """An opened Pillow image -> (S, S, 3) uint8, exactly as `load_image` treats a file (an image opened
    and not yet loaded gets the same JPEG draft decoding; a loaded one is used as it is)."""
    try:
        width, height = image.size
        if width * height > settings.max_pixels:
            raise BadImage("too_many_pixels", f"{width}x{height}")
        if settings.draft:
            _request_draft(image, settings.resize_side)  # a no-op on an image already loaded
        image.seek(0)  # animated GIF/WebP: first frame
        image.load()
        rgb = to_rgb(upright(image))
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImage("truncated_or_corrupt", f"{name}: {error}") from None
    return fit(rgb, settings)


_ORIENTATION_TAG = 0x0112  # EXIF Orientation; 1 = upright, 2-8 = mirrored and/or rotated


def upright(image):
    """The image as shown: `exif_transpose` only when the orientation tag asks for it (it copies the
    whole image even when there is nothing to turn)."""
    if image.getexif().get(_ORIENTATION_TAG, 1) in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _request_draft(image, size):
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the short side stays >= size."""
    if image.format != "JPEG":
        return
    width, height = image.size
    scale = size / min(width, height)
    image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


def to_rgb(image):
    """Any Pillow mode to RGB: 16-bit kept in range, transparency composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # convert("L") clips 16-bit values at 255 (a white image); scale them instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = image.convert("L")
    if "A" in image.getbands() or "transparency" in image.info:
        # Transparent pixels become white, as CLIP's image processor composites them
        # (a plain convert("RGB") would show whatever colour they happen to store).
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def fit(image, settings):
    """An RGB image (Pillow or (H, W, 3) uint8) -> (S, S, 3) uint8 as the settings' image processor makes it."""
    return resize_and_crop(image, settings.size, settings.resize_side, settings.resize == "square", settings.resample)


def resize_and_crop(image, size, resize_to=None, square=False, resample="bicubic"):
    """Shortest side to `resize_to` (default `size`; or both sides, `square`), then the central size x size square:
    (S, S, 3) uint8, as Hugging Face's image processors resize and crop.

    `image` is an RGB Pillow image or an (H, W, 3) uint8 array (as the simplejpeg path decodes it).

    The resize is torch's antialiased bicubic (or bilinear) on uint8 (Pillow's filters and their fixed-point
    rounding, about 3x faster than Pillow here); it stays within 2 levels of Pillow's resize on photos
    and previews (tests/test_golden_pixels.py, against pipeline/bench/reference_loader.py).
    """
    resize_to = resize_to or size
    is_array = isinstance(image, np.ndarray)
    width, height = (image.shape[1], image.shape[0]) if is_array else image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = resize_to if square else int(resize_to * long / short)
    new_size = (resize_to, new_long) if width <= height else (new_long, resize_to)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    if new_long > _MAX_ASPECT * resize_to:
        image = Image.fromarray(image) if is_array else image
        # A 1 x 100,000 strip would be resized to 224 x 22.4M pixels (15 GB) before the crop;
        # resample only the source box that the crop keeps.
        sx, sy = width / new_size[0], height / new_size[1]
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return np.asarray(image.resize((size, size), _PIL_FILTERS[resample], box=box), dtype=np.uint8)
    pixels = image if is_array else np.array(image, dtype=np.uint8)  # writable: torch shares it, no copy
    if new_size == (width, height):
        return np.ascontiguousarray(pixels[top:top + size, left:left + size])
    planes = _torch_resize(pixels, new_size, resample)[:, top:top + size, left:left + size]  # (3, S, S)
    # torch returns planes (C, H, W); three plane copies interleave them 4x faster than one strided copy.
    out = np.empty((size, size, 3), dtype=np.uint8)
    for channel in range(3):
        out[:, :, channel] = planes[channel]
    return out


_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _torch_resize(pixels, new_size, resample="bicubic"):
    """(H, W, 3) uint8 -> (3, new_size[1], new_size[0]) uint8 planes with torch's antialiased bicubic/bilinear."""
    import torch  # here, not at the top: `--help` and the table readers never import torch
    from torch.nn.functional import interpolate

    batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W), channels-last strides
    return interpolate(batch, size=(new_size[1], new_size[0]), mode=resample, antialias=True)[0].numpy()
