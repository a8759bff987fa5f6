"""The embedding benchmarks' texts: a realistic mix, generated deterministically.

Two thirds short queries (5-20 tokens), one third passages (100-300 tokens), shuffled; whole
common English words, so a word is about one token of all-MiniLM-L6-v2's vocabulary (its
tokenizer counts them exactly in the benchmarks that report tokens).
"""

from __future__ import annotations

import random

_PROSE = ("time year people way day man thing woman life child world school state family student "
          "group country problem hand part place case week company system program question work "
          "government number night point home water room mother area money story fact month lot "
          "right study book eye job word business issue side kind head house service friend father "
          "power hour game line end member law car city community name president team minute idea "
          "kid body information back parent face others level office door health person art war "
          "history party result change morning reason research girl guy moment air teacher force "
          "education")
_WORDS = _PROSE.split(" ")


def benchmark_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        words = rng.randint(3, 18) if index % 3 else rng.randint(98, 298)  # + [CLS], [SEP]
        texts.append(" ".join(rng.choice(_WORDS) for _ in range(words)))
    rng.shuffle(texts)
    return texts
