"""Choosing the backend from the model argument, and the errors for arguments that fit none."""

from __future__ import annotations

import pytest

from tests.inference.openai_server import OpenAITestServer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.backends import detect_backend, open_generator
from zen_coder.inference.huggingface import HuggingFaceGenerator
from zen_coder.inference.native import NativeGenerator
from zen_coder.inference.remote import OpenAIGenerator


def test_each_kind_of_model_argument_finds_its_backend(native_folder, hf_folder):
    assert detect_backend(str(native_folder)) == "native"
    assert detect_backend(str(hf_folder)) == "huggingface"
    assert detect_backend("Qwen/Qwen2.5-Coder-0.5B") == "huggingface"
    assert detect_backend("http://localhost:8000/v1") == "openai"
    assert detect_backend("https://api.openai.com/v1") == "openai"


def test_open_generator_opens_each_backend(native_folder, hf_folder):
    assert isinstance(open_generator(str(native_folder)), NativeGenerator)
    assert isinstance(open_generator(str(hf_folder)), HuggingFaceGenerator)
    native = open_generator(str(native_folder), dtype="bfloat16")
    with OpenAITestServer(native, model_id="served") as server:
        remote = open_generator(server.url, mode="chat", served_model="served")
    assert isinstance(remote, OpenAIGenerator)
    assert (remote.model, remote.mode) == ("served", "chat")


def test_an_explicit_backend_wins(hf_folder):
    with pytest.raises(ZenCoderError, match="is not a zen-coder model"):
        open_generator(str(hf_folder), backend="native")


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("{tmp}/missing/model", "not found: pass a model folder, a Hugging Face Hub name"),
        ("{tmp}", "holds neither zen_coder_config.json .* nor config.json"),
        ("{tmp}/weights.bin", "is a file, not a model folder"),
        ("no-such-model", "model 'no-such-model' not found"),
    ],
)
def test_arguments_that_are_no_model_are_one_line_errors(tmp_path, argument, message):
    (tmp_path / "weights.bin").write_bytes(b"")
    model = argument.format(tmp=tmp_path)
    with pytest.raises(ZenCoderError, match=message) as caught:
        open_generator(model)
    assert "\n" not in str(caught.value)


def test_an_unknown_backend_is_named(native_folder):
    with pytest.raises(ZenCoderError, match="unknown backend 'tpu'; choose one of native, "):
        open_generator(str(native_folder), backend="tpu")
