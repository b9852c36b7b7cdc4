"""A real browser for the tests that render pages: Debian's chromium, or a skip that says how to get it.

`make test` on a fresh machine (no browser) passes with these tests skipped and the install command
shown; `.ci/run` installs the browser and sets MMCACHE_REQUIRE_BROWSER=1, which turns the skip into a
failure, so CI never passes without having looked at a page.
"""

import os
import shutil

import pytest

REQUIRE = "MMCACHE_REQUIRE_BROWSER"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def chromium_command():
    """The headless Chromium command line, or a skip (a failure under MMCACHE_REQUIRE_BROWSER=1)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = f"Chromium is missing: this test checks the page in a real browser; install it with: {INSTALL}"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{reason} ({REQUIRE}=1: a missing browser is a failure here)")
        pytest.skip(reason)
    return [found, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
