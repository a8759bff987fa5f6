"""Texts for the embedding tests: deterministic, of every kind a RAG client sends."""

from __future__ import annotations

import random

QUERIES = [
    "how do I reset my password", "best pizza near me", "what is the capital of Australia",
    "symptoms of vitamin D deficiency", "python list comprehension example", "weather tomorrow",
    "cheap flights to Lisbon in May", "how long to boil an egg", "who wrote The Brothers Karamazov",
    "convert 5 miles to km", "why is the sky blue", "ok", "a", "refund policy",
]
NON_ASCII = [
    "Où est la gare la plus proche ?", "Straße, Mädchen und Größe", "¿Dónde está la biblioteca?",
    "東京は日本の首都です", "Москва — столица России", "naïve café façade coöperate",
    "Ελληνικά κείμενα για δοκιμή", "مرحبا بالعالم", "한국어 문장입니다", "Zürich ist schön im Frühling",  # noqa: RUF001 - Greek on purpose
]
EMOJI = [
    "I love this 😍🔥", "🚀 launch day 🎉🎉", "the cat 🐈 sat on the mat 🧶", "👍", "rain ☔ again ☹️",
    "family: 👨‍👩‍👧‍👦 and flags 🇯🇵🇫🇷", "math ∑ ∫ ≠ ≈ and arrows → ⇒",
]
_PROSE = ("the committee reviewed quarterly results and concluded that revenue growth in the "
          "northern region was driven by new contracts while costs rose due to supply chain delays "
          "engineers proposed a redesign of the cooling system to reduce energy use and the board "
          "approved funding for a pilot in two factories next spring")
_WORDS = _PROSE.split(" ")


def passages(count: int, seed: int = 0) -> list[str]:
    """Passages of 60 to 400 words: many past 256 tokens, which must be truncated."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(60, 400))) + "."
            for _ in range(count)]


def mixed_texts() -> list[str]:
    """At least 50 texts: short queries, long passages, non-ASCII, emoji, odd whitespace."""
    return [*QUERIES, *NON_ASCII, *EMOJI, *passages(20), "  padded with spaces  ", "tab\tand\nnewline"]


PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply on Wednesday."),
    ("She is cooking pasta for dinner.", "She's making spaghetti for the evening meal."),
    ("The flight was delayed by two hours.", "Our plane took off two hours late."),
]
"""Pairs that mean the same; any sentence of one pair is unrelated to any of another."""
