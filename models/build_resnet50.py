"""Write torchvision's ResNet50 with random weights (seed 0) as a safetensors state_dict.

No weights can be downloaded here, so the demo serves this file through the
same loading code a real one takes (``options.weights = "file"``). Its
predictions are meaningless; README says how to serve real weights.

Usage: python models/build_resnet50.py [OUTPUT]  (default models/artifacts/resnet50.safetensors)
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).parent / "artifacts" / "resnet50.safetensors"


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    import torch
    from safetensors.torch import save_file
    from torchvision.models import resnet50

    torch.manual_seed(0)
    model = resnet50(weights=None)
    output.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(output), metadata={
        "weights": "random (torch.manual_seed(0)), built by models/build_resnet50.py"})
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
