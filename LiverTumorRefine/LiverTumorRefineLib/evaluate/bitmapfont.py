"""A tiny built-in 5x7 bitmap font, so pictures can carry legends and numbers without a font
library. Upper case, digits and the punctuation the captions use; lower case is drawn as upper
case and any other character as "?"."""
from __future__ import annotations

import numpy as np

GLYPH_ROWS, GLYPH_COLS = 7, 5
ADVANCE = GLYPH_COLS + 1  # one blank column between characters
LINE = GLYPH_ROWS + 3  # rows per text line (three blank rows between lines)

# Each glyph: seven rows of five pixels, top to bottom, 1 = ink.
_GLYPHS = {
    'A': "01110 10001 10001 11111 10001 10001 10001",
    'B': "11110 10001 10001 11110 10001 10001 11110",
    'C': "01110 10001 10000 10000 10000 10001 01110",
    'D': "11110 10001 10001 10001 10001 10001 11110",
    'E': "11111 10000 10000 11110 10000 10000 11111",
    'F': "11111 10000 10000 11110 10000 10000 10000",
    'G': "01110 10001 10000 10111 10001 10001 01111",
    'H': "10001 10001 10001 11111 10001 10001 10001",
    'I': "01110 00100 00100 00100 00100 00100 01110",
    'J': "00111 00010 00010 00010 00010 10010 01100",
    'K': "10001 10010 10100 11000 10100 10010 10001",
    'L': "10000 10000 10000 10000 10000 10000 11111",
    'M': "10001 11011 10101 10101 10001 10001 10001",
    'N': "10001 10001 11001 10101 10011 10001 10001",
    'O': "01110 10001 10001 10001 10001 10001 01110",
    'P': "11110 10001 10001 11110 10000 10000 10000",
    'Q': "01110 10001 10001 10001 10101 10010 01101",
    'R': "11110 10001 10001 11110 10100 10010 10001",
    'S': "01111 10000 10000 01110 00001 00001 11110",
    'T': "11111 00100 00100 00100 00100 00100 00100",
    'U': "10001 10001 10001 10001 10001 10001 01110",
    'V': "10001 10001 10001 10001 10001 01010 00100",
    'W': "10001 10001 10001 10101 10101 10101 01010",
    'X': "10001 10001 01010 00100 01010 10001 10001",
    'Y': "10001 10001 01010 00100 00100 00100 00100",
    'Z': "11111 00001 00010 00100 01000 10000 11111",
    '0': "01110 10001 10011 10101 11001 10001 01110",
    '1': "00100 01100 00100 00100 00100 00100 01110",
    '2': "01110 10001 00001 00010 00100 01000 11111",
    '3': "11111 00010 00100 00010 00001 10001 01110",
    '4': "00010 00110 01010 10010 11111 00010 00010",
    '5': "11111 10000 11110 00001 00001 10001 01110",
    '6': "00110 01000 10000 11110 10001 10001 01110",
    '7': "11111 00001 00010 00100 01000 01000 01000",
    '8': "01110 10001 10001 01110 10001 10001 01110",
    '9': "01110 10001 10001 01111 00001 00010 01100",
    '.': "00000 00000 00000 00000 00000 01100 01100",
    ',': "00000 00000 00000 00000 01100 00100 01000",
    ':': "00000 01100 01100 00000 01100 01100 00000",
    '-': "00000 00000 00000 11111 00000 00000 00000",
    '>': "01000 00100 00010 00001 00010 00100 01000",
    '<': "00010 00100 01000 10000 01000 00100 00010",
    '%': "11000 11001 00010 00100 01000 10011 00011",
    '/': "00000 00001 00010 00100 01000 10000 00000",
    '(': "00010 00100 01000 01000 01000 00100 00010",
    ')': "01000 00100 00010 00010 00010 00100 01000",
    '=': "00000 00000 11111 00000 11111 00000 00000",
    '+': "00000 00100 00100 11111 00100 00100 00000",
    '_': "00000 00000 00000 00000 00000 00000 11111",
    "'": "00100 00100 01000 00000 00000 00000 00000",
    '#': "01010 01010 11111 01010 11111 01010 01010",
    '?': "01110 10001 00001 00010 00100 00000 00100",
    '!': "00100 00100 00100 00100 00100 00000 00100",  # the qa tiles' flag mark
}
_BITMAPS = {ch: np.array([[c == "1" for c in row] for row in rows.split()], dtype=bool) for ch, rows in _GLYPHS.items()}
_BITMAPS[" "] = np.zeros((GLYPH_ROWS, GLYPH_COLS), dtype=bool)


def glyph(character: str) -> np.ndarray:
    """The (7, 5) bool bitmap of one character."""
    return _BITMAPS.get(character.upper(), _BITMAPS["?"])


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` drawn at ``scale`` (without the trailing blank column)."""
    return max(0, len(text) * ADVANCE - 1) * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """A (7*scale, text_width) bool picture of ``text``, each font pixel a scale x scale block."""
    if not text:
        return np.zeros((GLYPH_ROWS * scale, 0), dtype=bool)
    gap = np.zeros((GLYPH_ROWS, 1), dtype=bool)
    parts = [part for ch in text for part in (glyph(ch), gap)][:-1]
    return np.kron(np.concatenate(parts, axis=1), np.ones((scale, scale), dtype=bool)).astype(bool)


def draw_text(rgb: np.ndarray, text: str, row: int, col: int, colour: tuple[int, int, int], scale: int = 1) -> int:
    """Draw ``text`` into ``rgb`` (H, W, 3) with its top-left corner at (row, col), clipped to the
    picture; returns the column just after the text."""
    ink = text_mask(text, scale)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + ink.shape[0], rgb.shape[0]), min(col + ink.shape[1], rgb.shape[1])
    if r1 > r0 and c1 > c0:
        region = rgb[r0:r1, c0:c1]
        region[ink[r0 - row:r1 - row, c0 - col:c1 - col]] = colour
    return col + ink.shape[1]
