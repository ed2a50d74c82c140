import pytest

from tests.models import native_folder, tiny_llama, tokenizer_folder  # noqa: F401

# Positions of the server tests' Hugging Face model: room for completions long enough that a
# test can act while one runs (the server refuses what the model's context cannot hold).
POSITIONS = 4096


@pytest.fixture(scope="session")
def hf_backend(tmp_path_factory, tokenizer_folder):  # noqa: F811 - the fixture above
    """One Hugging Face backend for every server test (a server's shutdown leaves it usable):
    the tests' tiny Llama, with a long context."""
    pytest.importorskip("transformers")
    from zen_coder.serving.huggingface import HuggingFaceBackend

    folder = tiny_llama(
        tmp_path_factory.mktemp("serving-hf") / "model", tokenizer_folder, POSITIONS
    )
    return HuggingFaceBackend(str(folder))
