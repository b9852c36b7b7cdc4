"""The half-post rule: which half of a post survives when its title or its image is missing.

Stage one (`embed/loader.py`), end-to-end fine-tuning (`e2e/data.py`) and
`predict` (`predict/classifier.py`) all decide a row's fate here, so a post is
kept, cut to a half or skipped for the same reason wherever it is read.
"""

from dataclasses import dataclass

BOTH, TEXT, IMAGE = "both", "text", "image"  # what survives


@dataclass(frozen=True)
class Survivor:
    """What is left of a post: `half` both, text or image (None: the row is skipped); `reason` why the
    rest is gone (the missing half's reason, or the skip reason), None for a whole post."""

    half: str = None
    reason: str = None

    @property
    def kept(self):
        return self.half is not None

    @property
    def missing(self):
        """The half that is gone from a kept half-post ('text' or 'image'), else None."""
        return {TEXT: IMAGE, IMAGE: TEXT}.get(self.half)


WHOLE = Survivor(BOTH)


def surviving_half(has_title, image_reason, keep_text_only, keep_image_only):
    """The rule. `image_reason`: None when the image loaded, else why not (e.g. missing_file);
    `keep_text_only`: a titled row whose image failed is kept with its title; `keep_image_only`: a row
    with an empty title is kept with its image. A row with neither half is skipped."""
    if has_title:
        if image_reason is None:
            return WHOLE
        return Survivor(TEXT, image_reason) if keep_text_only else Survivor(None, image_reason)
    if image_reason is None:
        return Survivor(IMAGE, "empty_title") if keep_image_only else Survivor(None, "empty_title")
    # Without image-only rows the empty title settles it before the image is looked at.
    return Survivor(None, f"empty_title_and_{image_reason}" if keep_image_only else "empty_title")


def skipped_before_loading(has_title, keep_image_only):
    """The skip reason of a row decided without its image (an empty title when image-only rows are not
    kept), else None: such rows' images are never read."""
    return None if has_title or keep_image_only else "empty_title"
