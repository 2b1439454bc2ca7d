"""Driving the site in a real headless Chromium (Playwright): the browser tests and
`vae-edge bench --target web` / `vae-edge tune --target web`. Needs the `[web]` extra (playwright)
and a Chromium (Debian's `chromium`, or $VAE_EDGE_CHROMIUM); no browser is downloaded."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vae_edge import VaeEdgeError


def chromium_path() -> str:
    """$VAE_EDGE_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    given = os.environ.get("VAE_EDGE_CHROMIUM")
    if given:
        if not Path(given).is_file():
            raise VaeEdgeError(f"$VAE_EDGE_CHROMIUM={given} does not exist")
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise VaeEdgeError("no Chromium found: apt-get install chromium (or set $VAE_EDGE_CHROMIUM to a Chrome/Chromium binary)")


def _playwright():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise VaeEdgeError("the browser tools need playwright: pip install 'vae-edge[web]'") from None
    return Error, sync_playwright


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright's Browser); one per thread at a time."""
    error, sync_playwright = _playwright()
    exe = chromium_path()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except error as e:
            raise VaeEdgeError(f"Chromium ({exe}) did not start: {str(e).splitlines()[0]}") from None
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(url: str, browser=None, viewport: tuple[int, int] = (1100, 900),
              timeout_s: float = 60) -> Iterator[tuple[object, list[str]]]:
    """(page, console_errors) for a served site, once its models are loaded (window.vaeEdge.ready).
    A page that reports an error while starting raises VaeEdgeError with the page's message."""
    error, _ = _playwright()
    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(chromium())
        errors: list[str] = []
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        stack.callback(page.close)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        try:
            page.wait_for_function("window.vaeEdge && (window.vaeEdge.ready || window.vaeEdge.errors.length > 0)",
                                   timeout=timeout_s * 1000)
        except error:
            raise VaeEdgeError(f"the page at {url} did not load its models within {timeout_s:.0f} s") from None
        page_errors = page.evaluate("window.vaeEdge.errors")
        if page_errors:
            raise VaeEdgeError(f"the page reported: {page_errors[0]}")
        yield page, errors
