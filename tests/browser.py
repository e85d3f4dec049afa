"""Where the system Chromium is and how to start it headless (for the dashboard tests and screenshots).

Playwright's own browser download needs the internet; the project uses Debian's `chromium`,
which `make test` installs (Makefile, target `browser`)."""

from __future__ import annotations

import shutil

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("no chromium on PATH: `make test` installs it (apt-get install chromium, as root)")
    return path
