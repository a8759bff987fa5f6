"""``batchserve export NAME --to onnx [--quantize int8]``: a served torch model's ONNX graph, checked.

The model is loaded as ``models.toml`` configures it (float32, on the CPU), its module exported
with ``torch.onnx.export`` (a dynamic batch axis, and a dynamic token axis for text), and written
as a folder the ONNX backends serve: ``model.onnx``, with, for text models, the tokenizer and
config files of the model's folder (weights left out). ``--quantize int8`` writes the graph
quantised by ONNX Runtime's tools (``onnx_quantize.py``): dynamically for the text models,
statically for resnet50, calibrated on the sample inputs. Then both backends answer the same
sample inputs (``--samples``, else a few built-in ones) and the drift is printed
(``batchserve/drift.py``): what the runtime and the precision did to the outputs.

Needs torch (the model's own backend) and the onnx extra.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from batchserve.backends import LoadError, backend_class
from batchserve.config import ConfigError, ModelConfig, load_models
from batchserve.drift import drift

KINDS = {"resnet50": "image", "transformer": "classifier", "embedding": "embedding"}
"""The torch backends whose models export, and what kind of graph each writes."""
ONNX_BACKENDS = {"image": "onnx-image", "classifier": "onnx-classifier", "embedding": "onnx-embedding"}
DRIFT_KINDS = {"image": "classifier", "classifier": "classifier", "embedding": "embedding"}
SAMPLE_TEXTS = [
    "The battery life is great and the screen is sharp.", "Terrible support, it broke after a week.",
    "how do I reset my password", "Où est la gare la plus proche ?", "ok",
    "the committee reviewed quarterly results and concluded that revenue growth was driven by new "
    "contracts while costs rose due to supply chain delays " * 6,
]
"""Texts the drift is measured on unless ``--samples`` gives others."""
_WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the model's name in the models.toml")
    parser.add_argument("--config", type=Path, default=Path("models/models.toml"))
    parser.add_argument("--to", choices=["onnx"], required=True, help="the format written")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamic for text models, static (calibrated on the samples) for resnet50")
    parser.add_argument("--output", type=Path, required=True, help="the folder written (model.onnx, ...)")
    parser.add_argument("--samples", type=Path, nargs="+",
                        help="inputs for the check and the calibration: image files, or a JSON list of texts")
    parser.add_argument("--opset", type=int, default=17, help="the ONNX operator set (17)")


def run(args: argparse.Namespace) -> int:
    try:
        config = next((c for c in load_models(args.config) if c.name == args.name), None)
    except ConfigError as exc:
        print(f"batchserve export: {exc}", file=sys.stderr)
        return 2
    if config is None:
        print(f"batchserve export: no model {args.name!r} in {args.config}", file=sys.stderr)
        return 2
    try:
        items = read_samples(args.samples) if args.samples else None
        report = export(config, args.output, quantize=args.quantize, items=items, opset=args.opset)
    except (ValueError, OSError, LoadError) as exc:
        print(f"batchserve export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def read_samples(paths: list[Path]) -> list[Any]:
    """Image files' bytes, or the texts of JSON lists."""
    items: list[Any] = []
    for path in paths:
        if path.suffix == ".json":
            texts = json.loads(path.read_text(encoding="utf-8"))
            if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
                raise ValueError(f"{path}: expected a JSON list of texts")
            items.extend(texts)
        else:
            items.append(path.read_bytes())
    return items


def export(config: ModelConfig, output: Path, *, quantize: str = "none", items: list[Any] | None = None,
           opset: int = 17) -> dict[str, Any]:
    """Write ``config``'s model as an ONNX model folder at ``output``; the drift on ``items``."""
    from batchserve.onnx_quantize import quantize_int8

    kind = KINDS.get(config.backend)
    if kind is None:
        raise ValueError(f"model {config.name!r} is served by {config.backend!r}; export writes "
                         f"the models of {sorted(KINDS)}")
    options = config.options
    if options.get("dtype", "float32") != "float32" or options.get("quantize", "none") != "none":
        raise ValueError(f"model {config.name!r} is configured with dtype or quantize options: "
                         "export starts from the float32 model")
    torch_backend = backend_class(config.backend)(config.model_copy(update={"device": "cpu"}))
    torch_backend.load("cpu")
    items = items or _default_items(kind, torch_backend)
    output.mkdir(parents=True, exist_ok=True)
    if kind != "image":
        _copy_folder(Path(config.path), output)
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "float32.onnx" if quantize == "int8" else output / "model.onnx"
        _export_graph(kind, torch_backend, graph, opset)
        if quantize == "int8":
            calibration = _pixels(torch_backend, items) if kind == "image" else None
            quantize_int8(graph, output / "model.onnx", calibration)
    onnx_config = _onnx_config(config, kind, output)
    onnx_backend = backend_class(onnx_config.backend)(onnx_config)
    onnx_backend.load("cpu")
    reference, candidate = (_answers(backend, items) for backend in (torch_backend, onnx_backend))
    return {"model": config.name, "written": str(output), "backend": onnx_config.backend,
            "precision": "int8" if quantize == "int8" else "float32", "samples": len(items),
            "drift": drift(DRIFT_KINDS[kind], reference, candidate)}


def _default_items(kind: str, backend: Any) -> list[Any]:
    if kind == "image":
        from batchserve.backends import sized_samples

        photos = [backend.sample_items().items[0]]
        photos += [sized_samples.photos(side).items[0] for side in sized_samples.IMAGE_SIDES]
        return photos
    return list(SAMPLE_TEXTS)


def _copy_folder(source: Path, output: Path) -> None:
    """The model folder's files but its weights: tokenizer, configs, sentence-transformers' files."""
    for path in source.rglob("*"):
        if path.is_file() and path.suffix not in _WEIGHTS and path.name != "README.md":
            target = output / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _export_graph(kind: str, backend: Any, path: Path, opset: int) -> None:
    import onnx
    import torch

    [module] = backend.torch_modules()
    module = module.float().to(memory_format=torch.contiguous_format) if kind == "image" else module
    args: tuple[torch.Tensor, ...]
    if kind == "image":
        wrapper, args = module, (torch.zeros(2, 3, 224, 224),)
        names, outputs, axes = ["pixels"], ["logits"], {"pixels": {0: "batch"}, "logits": {0: "batch"}}
    else:
        wrapper = _text_module(module, "logits" if kind == "classifier" else "last_hidden_state")
        ids = torch.ones(2, 8, dtype=torch.long)
        args = (ids, torch.ones_like(ids))
        names = ["input_ids", "attention_mask"]
        outputs = ["logits"] if kind == "classifier" else ["token_embeddings"]
        axes = {name: {0: "batch", 1: "tokens"} for name in names}
        axes[outputs[0]] = {0: "batch"} if kind == "classifier" else {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode():
        # torch.onnx's TorchScript exporter warns that it is deprecated (for the dynamo one, whose
        # graphs of these models this command has not been checked with); the graph is checked below.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper.eval(), args, str(path), dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=axes, opset_version=opset)
    if kind == "image":
        graph = onnx.load(str(path))
        onnx.helper.set_model_props(graph, {"labels": json.dumps(_categories())})
        onnx.save(graph, str(path))


def _categories() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _text_module(model: Any, field: str) -> Any:
    """A Hugging Face model as a module of (input_ids, attention_mask) to one of its outputs."""
    import torch

    class TextModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            result: torch.Tensor = getattr(self.model(input_ids=input_ids, attention_mask=attention_mask),
                                           field)
            return result

    return TextModule()


def _pixels(backend: Any, items: list[Any]) -> list[Any]:
    """The images as the onnx-image backend feeds them: normalised N x 3 x 224 x 224, one each."""
    import numpy as np

    from batchserve.backends import images

    mean = np.array(images.IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1) * 255
    std = np.array(images.IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1) * 255
    batches = []
    for item in items:
        with images.open_image(images.image_bytes(item), 1 << 40) as image:
            pixels = images.crop(image, "full")[None].transpose(0, 3, 1, 2).astype(np.float32)
        batches.append((pixels - mean) / std)
    return batches


def _onnx_config(config: ModelConfig, kind: str, output: Path) -> ModelConfig:
    return config.model_copy(update={"backend": ONNX_BACKENDS[kind], "path": output, "sha256": None,
                                     "device": "cpu", "options": onnx_options(kind, config.options)})


_SHARED_OPTIONS = {"image": ("top_k", "max_pixels", "max_request_pixels", "decode"),
                   "classifier": ("max_length", "max_chars", "length_grouping", "max_batch_tokens"),
                   "embedding": ("max_length", "pooling", "normalize", "dimensions", "max_chars",
                                 "length_grouping", "max_batch_tokens")}


def onnx_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The torch backend's ``options`` the ONNX preset of ``kind`` takes too (its torch-only ones,
    ``dtype``, ``quantize``, ``torch_threads``..., left out)."""
    return {key: value for key, value in options.items() if key in _SHARED_OPTIONS[kind]}


def _answers(backend: Any, items: list[Any]) -> list[Any]:
    """The backend's outputs for ``items``, one batch; an image classifier's over every class."""
    parameters = backend.parse_parameters({"top_k": 1000} if hasattr(backend, "default_top_k") else {})
    return list(backend.predict_batch([backend.preprocess(item, parameters) for item in items]))
