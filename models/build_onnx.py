"""Build the ONNX demo models: resnet50, the sentiment classifier and minilm, exported from the
torch demo artifacts by ``batchserve export`` (float32), for ``models/models-onnx.toml`` (the
image without torch serves them: Dockerfile.onnx). Needs torch where it runs, not where they
are served.

Usage: python models/build_onnx.py [OUTPUT]  (default models/artifacts/; writes resnet50-onnx/,
  sentiment-onnx/ and minilm-onnx/ there, building the torch artifacts they come from if missing)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from batchserve.config import ModelConfig
from batchserve.onnx_export import export

HERE = Path(__file__).parent
DEFAULT_OUTPUT = HERE / "artifacts"
SOURCES = {  # name -> (torch backend, artifact, its build script, options)
    "resnet50": ("resnet50", "resnet50.safetensors", "build_resnet50.py", {}),
    "sentiment": ("transformer", "transformer", "build_transformer.py", {"max_length": 128}),
    "minilm": ("embedding", "minilm", "build_minilm.py", {}),
}


def _built(script: str, path: Path) -> Path:
    if not path.exists():
        spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), HERE / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build(path)
    return path


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    for name, (backend, artifact, script, options) in SOURCES.items():
        source = _built(script, output / artifact)
        report = export(ModelConfig(name=name, backend=backend, path=source, options=options),
                        output / f"{name}-onnx")
        print(f"{name}: {report['drift']}")
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
