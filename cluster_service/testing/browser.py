"""Headless Chromium for the report's tests and benchmark: Debian's system ``chromium`` driven by
Playwright (its own browser download needs a network this machine lacks), with the flags that make it
start here offline and a fresh profile each time."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

#: Where Debian's ``chromium`` package puts the browser (``scripts/test.sh`` installs it as root).
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The system Chromium, or None when it is not installed."""
    return CHROMIUM if shutil.which(CHROMIUM) else shutil.which("chromium")


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 860) -> Iterator:
    """A Playwright page in a fresh headless Chromium (new user-data-dir), closed on exit."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium: install Debian's `chromium` package (scripts/test.sh does as root)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=path, headless=True, args=FLAGS,
                                                        viewport={"width": width, "height": height})
        try:
            yield context.new_page()
        finally:
            context.close()
