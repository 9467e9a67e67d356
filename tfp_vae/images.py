"""Image grids written as PNG by the standard library's zlib (no imaging dependency, and no
TensorFlow: the same on every Keras backend)."""

import math
import struct
import zlib

import numpy as np


def grid(images: np.ndarray, rows: int, cols: int, side: int = 28, pad: int = 1) -> np.ndarray:
    """[N, side*side] values in [0, 1] -> uint8 [H, W, 1] tiled rows x cols (N <= rows*cols)."""
    images = np.asarray(images, np.float32).reshape(-1, side, side)
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid.")
    cell = side + pad
    canvas = np.ones((rows * cell + pad, cols * cell + pad), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * cell : pad + r * cell + side, pad + c * cell : pad + c * cell + side] = (
            image
        )
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[..., None]


def square_side(shape) -> int | None:
    """The side of square one-channel images of `shape` (one example's, without the batch axis:
    (H, H), (H, H, 1), or a flat (H * H,) such as MNIST's (784,)), else None: such data (vectors,
    colour or oblong images) are not drawn as grids."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    if len(shape) == 2:
        return shape[0] if shape[0] == shape[1] else None
    if len(shape) != 1:
        return None
    side = math.isqrt(shape[0])
    return side if side * side == shape[0] and side > 2 else None


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 1|3] (grayscale or RGB) -> the bytes of a PNG file (8 bits a channel)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"Expected uint8 [H, W, 1|3]; got {image.dtype} {list(image.shape)}.")
    height, width, channels = image.shape

    def chunk(kind, payload):
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    # Each row starts with its filter type, 0 (none).
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def write_png(path: str, image: np.ndarray) -> None:
    """Writes uint8 [H, W, 1|3] to path, whole or not at all (`tfp_vae.files`)."""
    from tfp_vae import files

    files.write_bytes(path, encode_png(np.asarray(image)))


def write_grid(path: str, images: np.ndarray, rows: int, cols: int, side: int = 28) -> None:
    """Writes `images` ([N, side*side] values in [0, 1]) to path as one PNG grid (`grid`)."""
    write_png(path, grid(images, rows, cols, side))
