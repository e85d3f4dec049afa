"""Decoding and preprocessing of awkward images: the model must get the picture a person sees."""

import numpy as np
import pytest
from PIL import Image

from imageserver import encode, image_server, send, textured_image  # noqa: F401  (fixture)
from mmsa.images import decode
from mmsa.images.cache import ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.fetch import fetch_images

SIZE = 64
LIMIT = 50_000_000


def solid(mode: str, size: tuple[int, int], colour) -> Image.Image:
    return Image.new(mode, size, colour)


def test_cmyk_jpeg_over_http_keeps_its_colours(image_server, tmp_path):
    """A CMYK JPEG (print workflows, some CDNs) must come out as the right RGB, not inverted."""
    red = solid("CMYK", (200, 120), (0, 255, 255, 0))
    (image_server.root / "cmyk.jpg").write_bytes(encode(red, "JPEG", quality=95))
    config = FetchConfig(image_size=SIZE, allow_hosts=("127.0.0.1",))
    cache = ImageCache(tmp_path / "c")
    (result,) = fetch_images([("p", image_server.url("cmyk.jpg"))], config, cache, keep_images=True)
    assert result.status == "ok"
    r, g, b = result.image.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_png_over_http_keeps_its_gradient(image_server, tmp_path):
    """16-bit grey must be scaled to 8 bits, not clipped to white."""
    ramp = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (256, 1))
    (image_server.root / "deep.png").write_bytes(encode(Image.fromarray(ramp), "PNG"))
    config = FetchConfig(image_size=SIZE, allow_hosts=("127.0.0.1",))
    cache = ImageCache(tmp_path / "c")
    (result,) = fetch_images([("p", image_server.url("deep.png"))], config, cache, keep_images=True)
    array = result.image.astype(int)
    assert result.status == "ok"
    assert array[:, 0].mean() < 20 and array[:, -1].mean() > 235  # dark on the left, light on the right
    assert np.all(np.diff(array[SIZE // 2, :, 0]) >= 0)


def test_animated_gif_over_http_gives_its_first_frame(image_server, tmp_path):
    """An animated GIF is scored on its first frame."""
    frames = [solid("RGB", (100, 100), colour) for colour in [(0, 0, 255), (255, 0, 0), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    url = image_server.route("/anim", send(200, data, "image/gif"))
    config = FetchConfig(image_size=SIZE, allow_hosts=("127.0.0.1",))
    cache = ImageCache(tmp_path / "c")
    (result,) = fetch_images([("p", url)], config, cache, keep_images=True)
    assert result.status == "ok"
    r, g, b = result.image.reshape(-1, 3).mean(axis=0)
    assert b > 200 and r < 40 and g < 40


def test_exif_orientation_is_applied():
    """A phone photo stored sideways with EXIF orientation 6 must be turned upright."""
    image = solid("RGB", (200, 100), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 100, 100))  # stored: left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    array = decode.preprocess(encode(image, "JPEG", exif=exif, quality=95), SIZE, LIMIT)
    # Displayed upright it is 100 wide x 200 tall with the black half on top.
    assert array[: SIZE // 4].mean() < 30 and array[-SIZE // 4 :].mean() > 225


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    """Transparent pixels become white, whatever mode carries the alpha."""
    image = solid("RGBA", (80, 80), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 40, 80))  # left half opaque black
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = image.getpixel((79, 0))
    array = decode.preprocess(encode(image, "PNG"), SIZE, LIMIT)
    assert array[:, : SIZE // 4].mean() < 30
    assert array[:, -SIZE // 4 :].mean() > 225


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGB"])
def test_every_mode_becomes_uint8_rgb(mode):
    """Grey, bilevel and palette images give the same shape and type as RGB ones."""
    image = textured_image(120, 90).convert(mode)
    array = decode.preprocess(encode(image, "PNG"), SIZE, LIMIT)
    assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8


def test_resize_keeps_the_whole_picture_of_a_wide_image():
    """Squashed to SIZE x SIZE as in training: the thirds of a 3:1 image become thirds of the square."""
    image = solid("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))  # green middle third
    array = decode.preprocess(encode(image, "PNG"), SIZE, LIMIT).astype(int)
    third = SIZE // 3
    assert array[:, : third - 2, 0].mean() > 240 and array[:, : third - 2, 1].mean() < 15
    assert array[:, third + 2 : 2 * third - 2, 1].mean() > 240 and array[:, third + 2 : 2 * third - 2, 0].mean() < 15
    assert array[:, 2 * third + 2 :, 0].mean() > 240


@pytest.mark.parametrize("width, height", [(300, 380), (180, 150), (500, 240)])
def test_resize_matches_pillows_bicubic(width, height):
    """The resize computes what Pillow's antialiased bicubic resize (the one used before) computes, up to
    rounding: the cached arrays and the trained models stay comparable."""
    image = textured_image(width, height, seed=width)
    ours = decode.preprocess(encode(image, "PNG"), 260, LIMIT).astype(int)
    pillows = np.asarray(image.resize((260, 260), Image.Resampling.BICUBIC)).astype(int)
    diff = np.abs(ours - pillows)
    assert diff.mean() < 0.4 and diff.max() <= 8  # Pillow's BILINEAR: 0.64-0.86 here
    assert (diff == 0).mean() > 0.6  # BILINEAR: 36-46% of the values


def test_draft_decoding_matches_full_decoding():
    """Reduced-size JPEG decoding must give nearly the same pixels as a full decode + resize."""
    data = encode(textured_image(1600, 1200, seed=5), "JPEG", quality=90)
    fast = decode.preprocess(data, 224, LIMIT).astype(int)
    with Image.open(__import__("io").BytesIO(data)) as full:
        reference = np.asarray(
            full.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
        ).astype(int)
    assert np.abs(fast - reference).mean() < 6


@pytest.mark.parametrize("width, height, progressive, subsampling", [
    (150, 90, False, 2), (300, 260, True, 0), (530, 531, False, 1), (1100, 700, True, 2), (2100, 4000, False, 2),
])
def test_colour_jpegs_decode_to_pillows_pixels(width, height, progressive, subsampling, monkeypatch):
    """Upright colour JPEGs go to simplejpeg; the model must get exactly the pixels of Pillow's decode at its draft
    scale (the one the models were trained on), for every size, scale and chroma subsampling."""
    decoded, real_decode = [], decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: decoded.append(k) or real_decode(*a, **k))
    data = encode(textured_image(width, height, seed=width), "JPEG", quality=85, progressive=progressive,
                  subsampling=subsampling)
    with Image.open(__import__("io").BytesIO(data)) as im:
        short = min(width, height)
        im.draft("RGB", (width * 260 // short, height * 260 // short))
        reference = decode._resize_rgb(np.array(im.convert("RGB")), 260)
    assert np.array_equal(decode.preprocess(data, 260, LIMIT), reference)
    assert len(decoded) == 1


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", decode.NotAnImageError),
        (b"GIF89a" + b"\0" * 5, decode.DecodeError),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, decode.DecodeError),
        (b"RIFF\0\0\0\0WEBPVP8 garbage", decode.DecodeError),
        (b"%PDF-1.4", decode.NotAnImageError),
    ],
)
def test_bad_bytes_raise_only_image_errors(data, error):
    """Whatever the bytes, preprocess raises one of its own three errors, nothing else."""
    with pytest.raises(error):
        decode.preprocess(data, SIZE, LIMIT)
