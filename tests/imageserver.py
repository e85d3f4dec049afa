"""A real HTTP server on 127.0.0.1 that serves image files and misbehaves on request.

    with ImageServer(folder) as server:            # ephemeral port, threaded, keep-alive
        server.url("cat.jpg")                      # a file from `folder`
        server.route("/flaky", send(500), send(200, jpeg_bytes))   # hit 1 -> 500, hit 2+ -> 200
        server.route("/slow", drip(jpeg_bytes, interval=0.2))
        server.hit_count("/flaky")                 # the hit log proves what the client did
        server.connections                         # TCP connections accepted so far

A route takes handlers in order: hit n gets the n-th, the last one repeats. A handler is any
callable taking the http.server request handler; the factories below (send, redirect, stall,
drip_headers, drip, endless, lying_length) cover the usual ways servers go wrong, and
`Concurrency` counts how many requests a client has in progress at once.

Also here: `textured_image` + `encode` make real-looking image bytes of any format, and
`tls_files` + `ImageServer(tls=context)` give an HTTPS server with a throw-away CA.
Tests import the `image_server` fixture; benchmarks/bench_fetch.py imports the class.
"""

from __future__ import annotations

import io
import itertools
import mimetypes
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

Handler = Callable[[BaseHTTPRequestHandler], None]


class ImageServer:
    """Serves files under `root` (if given) and scripted routes; logs every request path."""

    def __init__(self, root: str | Path | None = None, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        self.root = Path(root) if root is not None else None
        self.host = host
        self.tls = tls  # a server-side SSLContext makes this an HTTPS server
        self.hits: list[str] = []  # request paths, in arrival order
        self._routes: dict[str, list[Handler]] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> ImageServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = _Server((self.host, 0), _make_handler_class(self))
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    def url(self, path: str, host: str | None = None) -> str:
        """URL of `path` on this server, through `host` (a name for it) if given."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host or self.host}:{self.port}/{path.lstrip('/')}"

    def route(self, path: str, *handlers: Handler) -> str:
        """Script `path`: hit n gets handlers[n-1], later hits the last one. Returns its URL."""
        path = "/" + path.lstrip("/")
        self._routes[path] = list(handlers)
        return self.url(path)

    def hit_count(self, path: str) -> int:
        return self._counts["/" + path.lstrip("/")]

    @property
    def connections(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.connections

    def _dispatch(self, request: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.hits.append(path)
            self._counts[path] += 1
            hit = self._counts[path]
        handlers = self._routes.get(path)
        if handlers:
            handlers[min(hit, len(handlers)) - 1](request)
            return
        file = (self.root / path.lstrip("/")).resolve() if self.root is not None else None
        if file is not None and file.is_relative_to(self.root.resolve()) and file.is_file():
            content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            send(200, file.read_bytes(), content_type)(request)
        else:
            send(404, b"not found", "text/plain")(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connections under a benchmark's load
    connections = 0

    def process_request(self, request, client_address) -> None:
        self.connections += 1  # only the serving thread accepts: no lock needed
        super().process_request(request, client_address)


def _make_handler_class(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def do_GET(self) -> None:
            try:
                server._dispatch(self)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up: that is the point of most routes

        def log_message(self, format: str, *args: object) -> None:
            pass

    return _Handler


# --- handler factories -------------------------------------------------------------------


def send(status: int = 200, body: bytes = b"", content_type: str = "application/octet-stream", headers: dict | None = None) -> Handler:
    """A well-formed response."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    return send(status, b"", "text/plain", {"Location": location})


class Concurrency:
    """A handler that holds each request `hold` seconds before `then` answers it, counting the requests in
    progress: `peak` is the most at once."""

    def __init__(self, then: Handler, hold: float):
        self.then, self.hold = then, hold
        self.peak = 0
        self._active = 0
        self._lock = threading.Lock()

    def __call__(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._active += 1
            self.peak = max(self.peak, self._active)
        time.sleep(self.hold)
        with self._lock:
            self._active -= 1
        self.then(request)


def stall(seconds: float) -> Handler:
    """Accept the request, say nothing for `seconds`, then close: slow (absent) headers."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        request.close_connection = True

    return handler


def drip_headers(interval: float) -> Handler:
    """Send a status line, then one more header every `interval` seconds, forever."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        request.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for n in itertools.count():
            time.sleep(interval)
            request.wfile.write(b"X-Drip-%d: 1\r\n" % n)
            request.wfile.flush()

    return handler


def drip(body: bytes, interval: float, chunk: int = 16, content_type: str = "image/jpeg") -> Handler:
    """Announce `body` with an honest Content-Length, then send `chunk` bytes per `interval`."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        for start in range(0, len(body), chunk):
            request.wfile.write(body[start : start + chunk])
            request.wfile.flush()
            time.sleep(interval)

    return handler


def endless(content_type: str = "image/jpeg", prefix: bytes = b"\xff\xd8\xff\xe0") -> Handler:
    """A 200 with no Content-Length and a body that never ends."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Connection", "close")
        request.end_headers()
        request.wfile.write(prefix)
        block = bytes(64 * 1024)
        while True:  # until the client hangs up (BrokenPipeError)
            request.wfile.write(block)

    return handler


def lying_length(body: bytes, claimed: int | str, content_type: str = "image/png") -> Handler:
    """Claim Content-Length `claimed` (a number, or any header text), send `body`, close the connection."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(claimed))
        request.end_headers()
        request.wfile.write(body)
        request.close_connection = True

    return handler


# --- real-looking test images -------------------------------------------------------------


def textured_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with gradients, stripes and noise: compresses like a photo, not a flat colour."""
    rng = np.random.default_rng(seed)
    x = np.arange(width, dtype=np.float32)[None, :, None]
    y = np.arange(height, dtype=np.float32)[:, None, None]
    phase = rng.uniform(0, 6.28, 3).astype(np.float32)
    pixels = (
        127
        + 60 * np.sin(x / rng.uniform(8, 40) + phase)
        + 60 * np.cos(y / rng.uniform(8, 40) + phase)
        + 6 * rng.standard_normal((height, width, 3), dtype=np.float32)
    )
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    """`image` saved in Pillow format `fmt` (JPEG, PNG, WEBP, GIF, ...) as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def tls_files(folder: Path, name: str = "localhost") -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for DNS name `name` signed by it: (ca.pem, cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("mmsa test CA", ca_key, "mmsa test CA", ca_key, ca=True)
    cert = certificate(name, key, "mmsa test CA", ca_key, ca=False)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[ImageServer]:
    """An ImageServer serving files from tmp_path / "www" (created empty)."""
    root = tmp_path / "www"
    root.mkdir()
    with ImageServer(root) as server:
        yield server
