"""The half-post rule as a table: which half of a post survives, for every title/image/policy case."""

import pytest

from pipeline.data.halves import skipped_before_loading, surviving_half

# has_title, image_reason, keep_text_only, keep_image_only -> (half that survives, reason)
CASES = [
    (True, None, False, False, ("both", None)),
    (True, None, True, True, ("both", None)),
    (True, "missing_file", True, False, ("text", "missing_file")),
    (True, "missing_file", False, True, (None, "missing_file")),
    (True, "not_an_image", False, False, (None, "not_an_image")),
    (False, None, False, True, ("image", "empty_title")),
    (False, None, True, False, (None, "empty_title")),
    (False, "missing_file", True, True, (None, "empty_title_and_missing_file")),
    (False, "missing_file", True, False, (None, "empty_title")),
    (False, "placeholder_image", False, True, (None, "empty_title_and_placeholder_image")),
]


@pytest.mark.parametrize("has_title,image_reason,text_only,image_only,expected", CASES)
def test_surviving_half(has_title, image_reason, text_only, image_only, expected):
    survivor = surviving_half(has_title, image_reason, text_only, image_only)
    assert (survivor.half, survivor.reason) == expected
    assert survivor.kept == (expected[0] is not None)
    assert survivor.missing == {"text": "image", "image": "text"}.get(expected[0])


@pytest.mark.parametrize("has_title,image_only,expected", [
    (True, False, None), (True, True, None), (False, True, None), (False, False, "empty_title"),
])
def test_rows_decided_before_their_image_is_read(has_title, image_only, expected):
    assert skipped_before_loading(has_title, image_only) == expected
