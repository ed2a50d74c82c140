import pytest

from tests.models import hf_folder, native_folder, tokenizer_folder  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def hf_backend(hf_folder):  # noqa: F811 - the fixture above
    """One Hugging Face backend for every test: a server's shutdown leaves it usable."""
    from zen_coder.serving.huggingface import HuggingFaceBackend

    return HuggingFaceBackend(str(hf_folder))
