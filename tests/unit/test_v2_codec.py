"""The v2 tensor codecs live beside the protocol: backends know nothing of v2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.backends import backend_class
from batchserve.backends.sklearn import SklearnBackend
from batchserve.config import ModelConfig
from batchserve.errors import InvalidInput
from batchserve.v2 import codec as codecs
from batchserve.v2.tensors import Tensor, bytes_tensor

from tests.support import PLUGINS, ROOT


def test_backends_do_not_import_the_v2_protocol() -> None:
    code = ("import sys; import batchserve.backends.base, batchserve.backends.sklearn, "
            "batchserve.backends.resnet50, batchserve.backends.transformer, batchserve_test_backends; "
            "print(sorted(m for m in sys.modules if m.startswith('batchserve.v2')))")
    env = {"PYTHONPATH": f"{ROOT / 'server'}:{PLUGINS}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            check=True)
    assert result.stdout.strip() == "[]"


class Scaled(SklearnBackend):
    """A plugin's subclass of a built-in backend."""


def config(backend: str) -> ModelConfig:
    return ModelConfig(name="m", backend=backend, path=Path("unused"))


def test_a_codec_is_found_along_the_backend_class_hierarchy() -> None:
    assert isinstance(codecs.codec_for(Scaled(config("sklearn"))), codecs.FeatureRowsCodec)
    echo = backend_class("echo")(config("echo"))  # the test plugin, through its entry point
    generic = codecs.codec_for(echo)
    assert type(generic) is codecs.Codec
    [tensor] = generic.outputs(echo, [2.0, {"a": 1}])
    assert tensor.datatype == "BYTES" and tensor.array.tolist() == [b"2.0", b'{"a":1}']


class Doubled(codecs.Codec[Any]):
    def outputs(self, backend: Any, outputs: list[Any]) -> list[Tensor]:
        return [Tensor("doubled", "FP64", np.asarray(outputs, dtype=np.float64))]


def test_a_plugin_registers_its_own_codec() -> None:
    slow_decode = backend_class("slow-decode")  # a subclass of the echo backend
    codec = Doubled()
    codecs.register(slow_decode, codec)
    try:
        assert codecs.codec_for(slow_decode(config("slow-decode"))) is codec
        assert type(codecs.codec_for(backend_class("echo")(config("echo")))) is codecs.Codec
    finally:
        codecs._CODECS.pop(slow_decode)


def test_the_generic_codec_reads_bytes_as_text() -> None:
    echo = backend_class("echo")(config("echo"))
    items = codecs.Codec[Any]().items(echo, {"x": bytes_tensor("x", ["héllo", "b"], (2,))})
    assert items == ["héllo", "b"]


class Features(codecs.Codec[Any]):
    """A plugin's codec that declares its own input tensor, in its metadata only."""

    def metadata(self, backend: Any) -> codecs.Metadata:
        return {"inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 2]}], "outputs": []}


def test_inputs_are_matched_to_the_declared_names() -> None:
    echo = backend_class("echo")(config("echo"))
    tensor = Tensor("features", "FP64", np.zeros((1, 2)))
    Features().check_names(echo, {"features": tensor})
    with pytest.raises(InvalidInput, match=r"input tensors \['input'\] are not the model's: it takes "
                                           r"\['features'\]"):
        Features().check_names(echo, {"input": tensor})
    with pytest.raises(InvalidInput, match=r"it takes \['input'\]"):
        codecs.Codec[Any]().check_names(echo, {"features": tensor})
