"""Optional fast path for plain colour JPEGs: simplejpeg (libjpeg-turbo straight to a NumPy array).

Used only when `simplejpeg` is installed (`pip install .[fast]`), and only for a JPEG that Pillow would
decode the same way: three-component YCbCr, no EXIF orientation to apply, within the pixel cap, at the
scale Pillow's `draft` would choose (1, 1/2, 1/4 or 1/8; simplejpeg's other m/8 scales move pixels by
36-160 levels and are never asked for). Everything else, and any file simplejpeg refuses, returns None
and goes through Pillow, which also gives the skip reasons. It saves Pillow's header parsing, its
conversion and one copy: about 0.3 ms of a 2.4 ms 320-px preview (docs/benchmarks.md).
"""

import math
import struct

from PIL import Image

try:
    import simplejpeg
except ImportError:  # the optional extra is not installed: Pillow decodes everything
    simplejpeg = None

_ORIENTATION_TAG = 0x0112


def decode(data, settings):
    """(H, W, 3) uint8 for a plain colour JPEG, decoded as Pillow (with `draft`) would; else None."""
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace != "YCbCr" or width * height > _pixel_cap(settings) or _oriented(data):
        return None  # Pillow decodes it, or refuses it with its reason
    scale = _draft_scale(width, height, settings.resize_side) if settings.draft else 1
    size = (-(-height // scale), -(-width // scale))
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_factor=scale, min_height=size[0], min_width=size[1])
    except ValueError:  # truncated or corrupt: Pillow says which
        return None
    return pixels if pixels.shape[:2] == size else None


def _pixel_cap(settings):
    """Our cap, or Pillow's own bomb limit where a raised --max-pixels passes it (Pillow would refuse)."""
    pillow = Image.MAX_IMAGE_PIXELS
    return settings.max_pixels if pillow is None else min(settings.max_pixels, 2 * pillow)


def _draft_scale(width, height, size):
    """The reduction Pillow's JpegImageFile.draft picks for the size `images._request_draft` asks for."""
    factor = size / min(width, height)
    requested = (math.ceil(width * factor), math.ceil(height * factor))
    fits = min(width // requested[0], height // requested[1])
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _oriented(data):
    """True when an EXIF block may hold an orientation other than 1 (or cannot be read: Pillow decides)."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker == 0xDA or length < 2:  # start of scan: no more metadata
            return False
        segment = data[position + 4:position + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            return _orientation(segment[6:]) != 1
        position += 2 + length
    return True  # metadata we could not walk to the scan: let Pillow read it


def _orientation(tiff):
    """The Orientation value of a TIFF header's first IFD, 1 when absent, 0 when unreadable."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[offset:offset + 2])
        for i in range(count):
            entry = tiff[offset + 2 + 12 * i:offset + 14 + 12 * i]
            tag, kind, _, value = struct.unpack(order + "HHI4s", entry)
            if tag == _ORIENTATION_TAG:
                return struct.unpack(order + "H", value[:2])[0] if kind == 3 else 0
    except (KeyError, struct.error):
        return 0
    return 1
