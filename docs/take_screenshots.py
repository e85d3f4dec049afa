"""Screenshots of each dashboard view for docs/analysts.md, taken by headless Chromium (Playwright).

The dashboard runs over the planted test snapshot (tests/dashboarddata.py: two brands, one spike, a
few hostile posts, an image cache); each page is captured at a fixed width and stored as a palette
PNG (a few tens of KB each) under docs/img/.

    .venv/bin/python docs/take_screenshots.py
"""

from __future__ import annotations

import io
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import dashboarddata  # noqa: E402
from browser import CHROMIUM_ARGS, chromium_path  # noqa: E402

from mmsa.dashboard.server import Dashboard, DashboardServer  # noqa: E402

SHOTS = [
    ("overview", "/?period=day"),
    ("spikes", "/spikes"),
    ("posts", "/posts?brand=acme&date_from=2024-03-14&date_to=2024-03-14"),
    ("voice", "/voice?period=day"),
    ("disagreement", "/disagreement"),
    ("quality", "/quality"),
]


def main() -> int:
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot, cache = dashboarddata.build(Path(tmp))
        server = DashboardServer(Dashboard(snapshot, cache), port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1040, "height": 900})
                for name, path in SHOTS:
                    page.goto(server.url.rstrip("/") + path)
                    # Thumbnails load lazily: load them all before the full-page capture.
                    page.eval_on_selector_all("img", "imgs => imgs.forEach(i => { i.loading = 'eager'; })")
                    page.wait_for_function("() => [...document.images].every(i => i.complete)")
                    png = page.screenshot(full_page=True)
                    image = Image.open(io.BytesIO(png))
                    image = image.crop((0, 0, image.width, min(image.height, 1500)))
                    target = out / f"dashboard-{name}.png"
                    image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
                    print(f"{target.relative_to(ROOT)}: {target.stat().st_size / 1024:.0f} KB")
                browser.close()
        finally:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
