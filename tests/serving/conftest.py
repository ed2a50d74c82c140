import pytest
import torch

from tests.models import _with_tokenizer, native_folder, tokenizer_folder  # noqa: F401
from zen_coder.data.tokenizer import load_tokenizer

# Positions of the server tests' Hugging Face model: room for completions long enough that a
# test can act while one runs (the server refuses what the model's context cannot hold).
POSITIONS = 4096


@pytest.fixture(scope="session")
def hf_backend(tmp_path_factory, tokenizer_folder):  # noqa: F811 - the fixture above
    """One Hugging Face backend for every server test (a server's shutdown leaves it usable):
    the tests' tiny Llama, with a long context."""
    transformers = pytest.importorskip("transformers")
    from zen_coder.serving.huggingface import HuggingFaceBackend

    tokenizer = load_tokenizer(tokenizer_folder)
    end = tokenizer.token_to_id("<|endoftext|>")
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=POSITIONS,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=tokenizer.token_to_id("<|pad|>"),
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serving-hf") / "model"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return HuggingFaceBackend(str(_with_tokenizer(folder, tokenizer_folder)))
