"""How different two screenshots are: a perceptual hash for near-duplicates, and the share of changed pixels.

One implementation for every writer of GUI pairs (the web explorer, the dataset importers), so the
`phash_before` / `phash_after` of any pair folder can be compared with any other.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _pixels(image: Image.Image | np.ndarray) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


def phash(image: Image.Image | np.ndarray) -> str:
    """64-bit DCT perceptual hash as 16 hex digits.

    The image in grey (ITU-R 601 luma, PIL's "L") resized to 32x32 (bilinear), its 2-D DCT-II, the 8x8 lowest
    frequencies; bit i = 1[coefficient i > the median of the 63 non-DC ones], row-major, DC bit 0 (it only says
    how bright the image is). After Zauner 2010, *Implementation and Benchmarking of Perceptual Image Hash
    Functions*. Two renders of one state hash equal; a small change flips few bits (`hamming`).
    """
    from scipy.fft import dctn

    grey = np.asarray(_pixels(image).convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    low = dctn(grey, type=2, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    bits[0] = False
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits of two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def diff_ratio(before: Image.Image | np.ndarray, after: Image.Image | np.ndarray) -> float:
    """Share of pixels whose RGB value changed (1.0 when the sizes differ)."""
    a, b = np.asarray(_pixels(before).convert("RGB")), np.asarray(_pixels(after).convert("RGB"))
    if a.shape != b.shape:
        return 1.0
    return float(np.any(a != b, axis=-1).mean())


__all__ = ["diff_ratio", "hamming", "phash"]
