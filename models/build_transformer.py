"""Build the demo text classifier: a small BERT with random weights and a locally trained vocabulary.

Nothing is downloaded: the WordPiece vocabulary is trained on synthetic review-like sentences
generated here from word lists, and the weights are random (``torch.manual_seed(0)``), so the
labels it predicts mean nothing. It exists to exercise the ``transformer`` backend end to end
(tokenisation, padding, batching, device and dtype handling) with an artifact in the same
``save_pretrained`` layout as a real fine-tuned model. The build is deterministic.

Usage: python models/build_transformer.py [OUTPUT]  (default models/artifacts/transformer/)
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).parent / "artifacts" / "transformer"
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
VOCAB_SIZE = 4000
SENTENCES = 4000
SEED = 0
BRANDS = 1500
INIT_STD = 0.05
"""Standard deviation of the random weights: BERT's default of 0.02 leaves an untrained model
scoring every text about 1/3 per class, its label flipping on 0.001 of noise; wider weights make
outputs differ between texts, so the tests (and int8 quantisation) have margins to compare."""

_SUBJECTS = [
    "the battery", "the screen", "this blender", "the delivery", "customer service", "the manual",
    "the zipper", "my order", "the sound", "the camera", "the fabric", "the app", "this kettle",
    "the handle", "the price", "the packaging", "the charger", "the keyboard", "the mattress",
    "the lens", "the software update", "the warranty", "the strap", "this novel", "the seller",
]
_OPINIONS = {
    "negative": ["broke after a week", "is awful", "stopped working", "feels cheap", "was a waste of money",
                 "arrived damaged", "is disappointing", "overheats constantly", "never charged properly",
                 "smells strange", "is painfully slow", "fell apart quickly"],
    "neutral": ["is okay", "works as described", "arrived on tuesday", "is average", "does the job",
                "matches the photos", "is neither good nor bad", "came in a box", "is what you expect",
                "is available in three colours"],
    "positive": ["is fantastic", "exceeded my expectations", "works beautifully", "is excellent value",
                 "feels sturdy and premium", "arrived early", "is a delight", "made my week",
                 "is wonderfully quiet", "lasts for days"],
}
_ADVERBS = ["honestly", "really", "frankly", "surprisingly", "overall", "sadly", "luckily", "clearly"]
_TAILS = ["would buy again", "will return it", "recommended to a friend", "gave it to my sister",
          "compared it with the old one", "after using it daily", "for the second time", "at this price"]
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SYLLABLES = ["zor", "ka", "mi", "lu", "vex", "tra", "bel", "qui", "no", "stra", "pex", "dom", "rin",
              "ta", "glo", "fen", "ix", "wa", "sho", "umb", "cre", "da", "jo", "ster", "pli", "ond", "hu",
              "rak", "sel", "vo", "gri", "mun", "ty", "eph", "bra", "lin", "kor", "zu", "ple", "ash"]


def _brand(rng: random.Random) -> str:
    """A made-up product name, so the vocabulary has to learn sub-word pieces, as real ones do."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def sentences(count: int = SENTENCES, seed: int = SEED) -> Iterator[str]:
    """Review-like sentences from the word lists above; the same ``seed`` gives the same text."""
    rng = random.Random(seed)
    brands = [_brand(rng) for _ in range(BRANDS)]
    for _ in range(count):
        label = rng.choice(list(_OPINIONS))
        parts = [rng.choice(_ADVERBS) + ",", rng.choice(_SUBJECTS), "of the", rng.choice(brands),
                 rng.choice(_OPINIONS[label])]
        if rng.random() < 0.5:
            parts += ["and I", rng.choice(_TAILS)]
        if rng.random() < 0.2:
            parts.append(f"({rng.randint(1, 500)} stars!)")
        yield " ".join(parts) + "."


def train_vocab(vocab_size: int = VOCAB_SIZE) -> dict[str, int]:
    """A lower-casing WordPiece vocabulary trained on ``sentences()``.

    The trainer numbers the ``##x`` continuation pieces in the order it meets them while walking
    a hash map (random per process), and breaks ties between equally frequent merges by those
    numbers, so two runs would keep different pieces. Listing every ``##x`` up front, in sorted
    order, among the special tokens numbers them before training starts and makes it repeatable.
    """
    from tokenizers import BertWordPieceTokenizer

    characters = sorted({c for text in sentences() for c in text.lower() if not c.isspace()})
    special = [*_SPECIAL, *(f"##{c}" for c in characters)]
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(sentences(), vocab_size=vocab_size, min_frequency=1,
                                special_tokens=special, show_progress=False)
    vocab: dict[str, int] = trainer.get_vocab()
    return vocab


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write tokenizer and model to ``output`` with ``save_pretrained`` (safetensors)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    # In transformers 5 BertTokenizer is the fast (Rust tokenizers) one; BertTokenizerFast is an alias.
    tokenizer = BertTokenizer(vocab=train_vocab(), do_lower_case=True, model_max_length=512)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024, max_position_embeddings=512,
        id2label=LABELS, label2id={label: index for index, label in LABELS.items()},
        pad_token_id=tokenizer.pad_token_id, initializer_range=INIT_STD,
    )
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(config)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output)
    model.save_pretrained(output, safe_serialization=True)
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
