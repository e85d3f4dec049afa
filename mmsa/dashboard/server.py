"""The dashboard's HTTP side: the routes (`Dashboard.handle`, independent of HTTP: benchmarks call it directly),
thumbnails from the image cache, and the server on the standard library's ThreadingHTTPServer, with headers that
forbid scripts and a Host check against DNS rebinding."""

from __future__ import annotations

import functools
import io
import ipaddress
import sys
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mmsa.dashboard.filters import Filters, one, with_view_settings
from mmsa.dashboard.pages import Pages, page, to_csv
from mmsa.dashboard.svg import esc

CSS_PATH = Path(__file__).with_name("dashboard.css")
SECURITY_HEADERS = {
    # No script may run and nothing may load from elsewhere: post text is untrusted input.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    cache: bool = False
    headers: dict = field(default_factory=dict)


class Dashboard(Pages):
    """The pages, tables and thumbnails, answered by path and query string."""

    def handle(self, path: str, query: dict[str, list[str]]) -> Response:
        """The response to GET `path` with the parsed query string."""
        pages = {"/": self.page_overview, "/spikes": self.page_spikes, "/posts": self.page_posts,
                 "/voice": self.page_voice, "/disagreement": self.page_disagreement, "/quality": self.page_quality}
        try:
            if path == "/static/dashboard.css":
                return Response(200, "text/css; charset=utf-8", CSS_PATH.read_bytes(), cache=True)
            if path == "/thumb":
                return self.thumbnail(one(query, "url"))
            if path == "/favicon.ico":  # browsers ask on every first visit: none, without a 404 in their console
                return Response(204, "image/x-icon", b"")
            f = Filters.parse(query)
            if path.startswith("/csv/") and path[5:] in self.TABLES:
                return self.csv(path[5:], f, query)
            if path not in pages:
                return Response(404, "text/plain; charset=utf-8", b"not found")
            with self.snapshot.cursor() as con:
                return Response(200, "text/html; charset=utf-8", pages[path](con, f, query).encode())
        except ValueError as exc:
            back = path if path in pages else "/"  # a way back, not a dead end (nor a path of the request's)
            return Response(400, "text/html; charset=utf-8", page(
                "Bad request", "", f"<p class='error'>{esc(exc)}</p><p><a href='{esc(back)}'>Back to this view without "
                "its filters</a> · <a href='/'>Overview</a></p>").encode())

    def csv(self, name: str, f: Filters, query: dict[str, list[str]]) -> Response:
        f = with_view_settings(name, f, query)
        with self.snapshot.cursor() as con:
            table = getattr(self, f"table_{name}")(con, f)
        return Response(200, "text/csv; charset=utf-8", to_csv(table).encode(),
                        headers={"Content-Disposition": f'attachment; filename="mmsa-{name}.csv"'})

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one Dashboard per process; thumbnails are small
    def _thumbnail_bytes(self, url: str) -> bytes | None:
        from PIL import Image

        from mmsa.images.cache import CacheDamaged

        out = io.BytesIO()
        try:
            result = self.images.lookup(url)
            if result is None or result.status != "ok":
                return None
            with Image.open(io.BytesIO(self.images.load(result.image_key))) as img:
                img.thumbnail((240, 240))
                img.convert("RGB").save(out, format="JPEG", quality=80)  # re-encoded: never the dump's bytes as served
        except (OSError, ValueError, CacheDamaged):  # bytes Pillow cannot draw, or a damaged entry: no thumbnail
            return None
        return out.getvalue()

    def thumbnail(self, url: str | None) -> Response:
        data = self._thumbnail_bytes(url) if self.images is not None and url else None
        if data is None:
            return Response(404, "text/plain; charset=utf-8", b"no cached image")
        return Response(200, "image/jpeg", data, cache=True)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmsa-dashboard"
    server: DashboardServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        url = urlsplit(self.path)
        if not self.server.host_allowed(self.headers.get("Host", "")):
            # DNS rebinding: a web page whose name resolves to 127.0.0.1 must not read the dashboard.
            response = Response(403, "text/plain; charset=utf-8", b"unexpected Host header")
        else:
            try:
                response = self.server.app.handle(url.path, parse_qs(url.query))
            except Exception as exc:  # noqa: BLE001 - one failed page must not stop the server
                self.log_error("%s: %r", url.path, exc)
                response = Response(500, "text/html; charset=utf-8",
                                    page("Error", "", f"<p class='error'>{esc(type(exc).__name__)}: {esc(exc)}</p>").encode())
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "max-age=3600" if response.cache else "no-store")
        for key, value in {**SECURITY_HEADERS, **response.headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if self.server.verbose:
            super().log_message(format, *args)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: Dashboard, host: str = "127.0.0.1", port: int = 8765, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.app = app
        self.verbose = verbose
        self.loopback = _is_loopback(host)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def host_allowed(self, header: str) -> bool:
        if not self.loopback:
            return True  # exposed on purpose (--host): any name the network uses for this machine
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return name.strip("[]") in ("127.0.0.1", "localhost", "::1")


def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8765, cache: str | Path | None = None) -> None:
    """Run the dashboard until interrupted."""
    app = Dashboard(db, cache)
    try:
        server = DashboardServer(app, host, port, verbose=True)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    print(f"mmsa dashboard on {server.url} over {db} (read-only); Ctrl-C stops it.", file=sys.stderr)
    if server.loopback:
        print("Only this machine can open it. To reach it from another, tunnel it (ssh -L PORT:127.0.0.1:PORT host) "
              "or start it with --host 0.0.0.0: it has no login, so anyone who can reach the port reads the data.",
              file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
