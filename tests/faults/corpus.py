"""A corpus of odd and hostile image files, each made for real (no mocks): what the loader must
refuse (with a reason) or load right."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import truncate, write_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int, colour: int, rows) -> bytes:
    """A PNG written by hand: ``rows`` yields each scanline's raw bytes (filter byte added here),
    compressed as a stream, so a huge image of zeros costs little memory to write."""
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" + row) for row in rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def write_bomb(path: Path, side: int = 13_000) -> Path:
    """A real decompression bomb: a ``side`` x ``side`` 8-bit grey PNG of zeros, about 0.2 MB on
    disk and ``side**2`` bytes (169 MB) once decoded (3x that as RGB). 13000 px stays under PIL's
    own refusal (2 x 89.5 M pixels), so only our limit stands between it and the memory."""
    zero = bytes(side)
    path.write_bytes(png_bytes(side, side, 8, 0, (zero for _ in range(side))))
    return path


def write_header_bomb(path: Path, side: int = 40_000) -> Path:
    """A header claiming 1.6 G pixels over a few bytes of data: PIL refuses it on open."""
    path.write_bytes(png_bytes(side, side, 8, 0, [bytes(16)]))
    return path


def write_16bit_grey(path: Path, value: int = 40_000) -> Path:
    Image.fromarray(np.full((24, 32), value, dtype=np.uint16)).save(path)
    return path


def write_16bit_rgb(path: Path, value: int = 40_000) -> Path:
    row = np.full((32, 3), value, dtype=">u2").tobytes()
    path.write_bytes(png_bytes(32, 24, 16, 2, [row] * 24))
    return path


def write_exif_rotated(path: Path) -> Path:
    """Stored 40 wide x 20 high, left half red, right half blue, with EXIF orientation 6 ("rotate
    90 degrees clockwise to show"): shown upright it is 20 x 40, red on top, blue below."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes(), quality=95)
    return path


# name -> (writer, expected BadImage reason or None when it must load)
def build(folder: Path) -> dict[str, str | None]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    truncate(write_image(folder / "truncated.jpg", size=(64, 64), seed=3))
    (folder / "not_an_image.jpg").write_bytes(b"GIF89a? no: plain text pretending\n" * 20)
    write_bomb(folder / "bomb.png")
    write_header_bomb(folder / "header_bomb.png")
    write_16bit_grey(folder / "grey16.png")
    write_16bit_rgb(folder / "rgb16.png")
    write_exif_rotated(folder / "exif6.jpg")
    write_image(folder / "cmyk.jpg", mode="CMYK", seed=4)
    write_image(folder / "rgba.png", mode="RGBA", seed=5)
    write_image(folder / "grey.png", mode="L", seed=6)
    return {"zero.jpg": "empty", "truncated.jpg": "truncated", "not_an_image.jpg": "unreadable",
            "bomb.png": "too-large", "header_bomb.png": "too-large", "grey16.png": None,
            "rgb16.png": None, "exif6.jpg": None, "cmyk.jpg": None, "rgba.png": None, "grey.png": None}
