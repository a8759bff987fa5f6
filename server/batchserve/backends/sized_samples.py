"""Inputs of a chosen size, for the planner's memory-by-input measurement
(``capabilities.SizedInputs``): JPEGs made from the photos scikit-learn ships, and texts of
a given number of tokens. Nothing here runs while serving.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from batchserve.backends.capabilities import Samples

IMAGE_SIDES = [224, 512, 1024]
"""Source images' longer side in pixels: a thumbnail, a web image, a phone photo's preview."""
TEXT_TOKENS = [16, 64, 256]
"""Tokens per item, special tokens included (the model's ``max_length`` is added)."""
MAX_IMAGE_SIDE = 16384
_WORDS = ["the", "battery", "life", "is", "great", "and", "the", "screen", "is", "sharp"]


def sample_photos() -> list[Path]:
    """The JPEG photos scikit-learn ships (``sklearn.datasets.load_sample_images``' folder)."""
    import sklearn.datasets

    return sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))


def photos(long_side: int) -> Samples:
    """scikit-learn's photos resized with Pillow (Lanczos) to ``long_side`` px on the longer
    side, aspect kept, saved as JPEG (quality 90)."""
    from PIL import Image

    if not 16 <= long_side <= MAX_IMAGE_SIDE:
        raise ValueError(f"an image size must be 16 to {MAX_IMAGE_SIDE} px, not {long_side}")
    items, shapes = [], []
    for path in sample_photos():
        with Image.open(path) as photo:
            scale = long_side / max(photo.size)
            size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
            resized = photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        resized.save(buffer, format="JPEG", quality=90)
        items.append(buffer.getvalue())
        shapes.append(f"{path.name} {size[0]}x{size[1]}")
    return Samples(items, ", ".join(shapes) + " (scikit-learn's photos resized, JPEG quality 90)")


def long_text(max_length: int) -> Samples:
    """A text past any ``max_length``: the text backends' ``sample_items``."""
    text = " ".join(["the battery life is great and the screen is sharp"] * 64)
    return Samples([text], f"a text of {len(text)} characters, truncated at max_length "
                           f"({max_length} tokens)")


def text_sizes(max_length: int) -> list[int]:
    """``TEXT_TOKENS`` below ``max_length``, then ``max_length``."""
    return [tokens for tokens in TEXT_TOKENS if tokens < max_length] + [max_length]


def text_of_tokens(tokenize: Callable[[list[str]], list[list[int]]], tokens: int,
                   max_length: int) -> Samples:
    """The longest run of sample words that ``tokenize`` (special tokens added, truncated at
    ``max_length``) turns into at most ``tokens`` tokens; its count is in the description."""
    if not 1 <= tokens <= max_length:
        raise ValueError(f"a text size must be 1 to {max_length} tokens (the model's max_length), "
                         f"not {tokens}")
    words = [_WORDS[i % len(_WORDS)] for i in range(tokens + 1)]  # a word is at least one token

    def count(n: int) -> int:
        return len(tokenize([" ".join(words[:n])])[0])

    low, high = 1, len(words)  # the largest n with count(n) <= tokens, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if count(middle) <= tokens:
            low = middle
        else:
            high = middle - 1
    text = " ".join(words[:low])
    return Samples([text], f"{count(low)} tokens ({low} words)")
