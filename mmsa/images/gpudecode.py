"""JPEG decoding on the GPU, in batches: `torchvision.io.decode_jpeg(..., device="cuda")` (nvJPEG), then the same
antialiased bicubic resize as mmsa.images.decode, on the GPU too.

On a GPU machine the model scores thousands of posts a second while decoding + resizing on the CPU costs a few
ms of CPU per image (benchmarks/results/infer.md): the GPU sat idle behind the CPU. With
FetchConfig.gpu_decode (`--gpu-decode`), the fetch threads hand each JPEG's bytes to one BatchDecoder per
process, which decodes what has gathered (up to `batch` images, or whatever came within `linger` seconds) in
one call and hands each thread back its array.

What stays on the CPU, exactly as before: sniffing the format, the pixel cap (read from the JPEG's header before
any decoding: a decompression bomb is refused the same way), every format other than JPEG, and any JPEG the GPU
decoder refuses (CMYK, progressive ones nvJPEG does not take, corrupt bytes): those are decoded by
mmsa.images.decode.preprocess, which gives the statuses. A batch that fails is retried image by image.
Without a GPU, or without `torchvision.io.decode_jpeg`, `available()` is False and the option does nothing.

The GPU's pixels are not bit-identical to the CPU path's (nvJPEG's IDCT and upsampling, and a full-size decode
where the CPU path decodes at a reduced DCT scale): within a few levels, as between JPEG decoders.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import Future

import numpy as np

from mmsa.images import decode


def available(device: str = "cuda") -> bool:
    """True when JPEGs can be decoded on `device` (for "cuda": a GPU is present and torchvision decodes on it)."""
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available())


class BatchDecoder:
    """Decode + resize JPEGs in batches on `device` for many threads; preprocess(data, size, max_pixels) is a
    drop-in for mmsa.images.decode.preprocess (same result shape and dtype, same exceptions)."""

    def __init__(self, device: str = "cuda", batch: int = 64, linger: float = 0.005):
        self.device, self.batch, self.linger = device, batch, linger
        self._queue: list[tuple[bytes, int, Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # decode calls made (for tests and statistics)
        self.images = 0  # images decoded on the device
        self._thread = threading.Thread(target=self._run, name="mmsa-gpu-decode", daemon=True)
        self._thread.start()

    def preprocess(self, data: bytes, size: int, max_pixels: int) -> np.ndarray:
        if decode.sniff(data) != "JPEG" or not _plain_jpeg(data, max_pixels):
            return decode.preprocess(data, size, max_pixels)  # other formats, bombs, odd JPEGs: the CPU path
        future: Future = Future()
        with self._cond:
            if self._closed:
                return decode.preprocess(data, size, max_pixels)
            self._queue.append((data, size, future))
            self._cond.notify()
        image = future.result()
        return image if image is not None else decode.preprocess(data, size, max_pixels)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                # Let a batch gather: up to `batch` images, or what came within `linger` seconds.
                deadline = time.monotonic() + self.linger
                while len(self._queue) < self.batch and not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                work, self._queue = self._queue[: self.batch], self._queue[self.batch:]
            self._decode(work)

    def _decode(self, work: list[tuple[bytes, int, Future]]) -> None:
        try:
            images = decode_resize([d for d, _, _ in work], [s for _, s, _ in work], self.device)
            self.batches += 1
        except Exception:  # noqa: BLE001 - one bad image fails the batch: decode one by one
            images = []
            for data, size, _ in work:
                try:
                    images.append(decode_resize([data], [size], self.device)[0])
                except Exception:  # noqa: BLE001 - left to the CPU path, which gives the status
                    images.append(None)
        self.images += sum(i is not None for i in images)
        for (_, _, future), image in zip(work, images):
            future.set_result(image)


def decode_resize(datas: list[bytes], sizes: list[int], device: str) -> list[np.ndarray]:
    """Decode JPEG bytes on `device` in one call, resize each to size x size like mmsa.images.decode; HWC uint8 arrays."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    out = []
    for chw, size in zip(decoded, sizes):
        pixels = chw.unsqueeze(0).contiguous(memory_format=torch.channels_last)
        if pixels.device.type == "cpu":  # uint8 antialiased bicubic, as mmsa.images.decode computes it
            resized = decode.resize(pixels, size)
        else:  # on the GPU in float, rounded back to uint8
            resized = decode.resize(pixels.float(), size).round_().clamp_(0, 255).to(torch.uint8)
        out.append(resized[0].permute(1, 2, 0).cpu().numpy())
    return out


def _plain_jpeg(data: bytes, max_pixels: int) -> bool:
    """True for a JPEG the GPU path may take: under the pixel cap and upright (no EXIF rotation to apply).
    Over the cap, or anything unusual, goes to the CPU path, which raises the status."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            width, height = im.size
            return width * height <= max_pixels and im.mode == "RGB" and im.getexif().get(decode.ORIENTATION, 1) == 1
    except Exception:  # noqa: BLE001
        return False
