"""Decode untrusted image bytes into the model's input: uint8 RGB, size x size.

The format is sniffed from magic bytes (servers lie in Content-Type) and Pillow is only
allowed to open the sniffed format. Large JPEGs are decoded at reduced size (draft mode),
then every image gets one antialiased bicubic resize to size x size, squashed (the whole picture
kept, no crop): the same preprocessing the models were trained with (mmsa.data uses this module too).
Upright colour JPEGs, most images, are decoded by simplejpeg: the same libjpeg-turbo decode at the
same draft scale, so the same pixels, straight into an array, without Pillow's copy out.
"""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps

# Bump when the output for the same bytes changes, so that cached training features are not reused.
VERSION = 3
MAX_PIXELS = 50_000_000  # width x height cap, checked before decoding (decompression bombs)

ORIENTATION = 0x0112  # the EXIF tag

# Magic bytes -> Pillow format name. Only these formats are accepted.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


class ImageError(Exception):
    """Base of the three ways image bytes can be rejected."""


class NotAnImageError(ImageError):
    """The bytes are not one of the accepted image formats."""


class TooManyPixelsError(ImageError):
    """The image's declared size is over the pixel limit (a decompression bomb, or just huge)."""


class DecodeError(ImageError):
    """The bytes look like an image but cannot be decoded (truncated, corrupt)."""


def sniff(data: bytes) -> str | None:
    """Pillow format name of `data` judged from its first bytes, or None if not accepted."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and _brands(data) & {b"avif", b"avis"}:  # major, or compatible beside mif1 / msf1
        return "AVIF"
    return None


def _brands(data: bytes) -> set[bytes]:
    """An ISO media file's brands: the ftyp box's major brand and its compatible ones (HEIC lists none of AVIF's)."""
    end = min(int.from_bytes(data[:4], "big"), len(data), 64)
    return {data[8:12]} | {data[i:i + 4] for i in range(16, end - 3, 4)}


def preprocess(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Decode `data` and return a uint8 array of shape (size, size, 3).

    EXIF orientation is applied; CMYK, palette, grey, 16-bit and alpha images become RGB
    (transparency composited on white); animated images give their first frame.
    Raises NotAnImageError, TooManyPixelsError or DecodeError; never anything else for
    bad input.
    """
    fmt = sniff(data)
    if fmt is None:
        raise NotAnImageError("empty body" if not data else f"unknown format, starts with {data[:8]!r}")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise TooManyPixelsError(f"{width}x{height} pixels is over the limit of {max_pixels}")
            if fmt == "JPEG":  # DCT-scale down, keeping both sides >= size
                short = min(width, height)
                draft = (max(1, width * size // short), max(1, height * size // short))
                if im.mode == "RGB" and im.getexif().get(ORIENTATION, 1) == 1:
                    scale = _draft_scale(width, height, draft)
                    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // scale),
                                                 min_height=-(-height // scale))  # strict: truncated data raises
                    return _resize_rgb(rgb, size)
                im.draft("RGB", draft)
            im.load()  # the first frame only, for animated formats
            ImageOps.exif_transpose(im, in_place=True)  # in place: the default copies every image, rotated or not
            return _resize_rgb(np.array(_to_rgb(im), dtype=np.uint8), size)  # writable: torch shares only that
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(str(exc)) from exc
    except Exception as exc:  # corrupt input makes Pillow raise many types (OSError, SyntaxError, ...)
        raise DecodeError(f"{fmt}: {type(exc).__name__}: {exc}") from exc


def _draft_scale(width: int, height: int, draft: tuple[int, int]) -> int:
    """The DCT downscale Pillow's draft mode picks for that request (JpegImagePlugin.draft): 8, 4, 2 or 1."""
    fits = min(width // draft[0], height // draft[1])
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """A writable H x W x 3 uint8 array, resized to size x size x 3."""
    height, width, _ = rgb.shape
    # (1, 3, H, W) over the H x W x 3 bytes, with strides that make it unambiguously channels-last, so
    # that the output is channels-last too and comes back as H x W x 3 without a copy (0.5 ms saved).
    pixels = torch.from_numpy(rgb).as_strided((1, 3, height, width), (rgb.size, 1, 3 * width, 3))
    return resize(pixels, size)[0].permute(1, 2, 0).numpy()


def resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic on uint8, as Pillow's BICUBIC resize computes it (a tenth of the values differ,
    by 0.09 levels on average), at about a third of its CPU."""
    return torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: keep the high byte (a plain convert would clip everything to white).
        return Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im
