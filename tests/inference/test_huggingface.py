"""The Hugging Face backend: batched, left-padded greedy decoding is transformers' own one-by-one
greedy decoding; sampling follows the seed; stop sequences cut; the identity fingerprints."""

from __future__ import annotations

import pytest
import torch

from tests.inference.prompts import PROMPTS, ascii_piece
from zen_coder.errors import ZenCoderError
from zen_coder.inference.generation import GenerationConfig, cut_at_stop
from zen_coder.inference.huggingface import HuggingFaceGenerator, folder_fingerprint

transformers = pytest.importorskip("transformers")

GREEDY = GenerationConfig(max_new_tokens=12)
SAMPLED = GenerationConfig(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=3)


@pytest.fixture(scope="module")
def hf(hf_folder) -> HuggingFaceGenerator:
    return HuggingFaceGenerator(str(hf_folder))


def transformers_greedy(folder, prompt: str, steps: int) -> str:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=steps, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_batched_greedy_equals_transformers_one_by_one(hf, hf_folder):
    completions = hf.complete(PROMPTS, GREEDY)
    expected = [transformers_greedy(hf_folder, prompt, GREEDY.max_new_tokens) for prompt in PROMPTS]
    assert [texts[0] for texts in completions] == expected
    assert all(expected)


def test_sampling_follows_the_seed_and_gives_n(hf):
    first, again = hf.complete(PROMPTS, SAMPLED), hf.complete(PROMPTS, SAMPLED)
    other_seed = hf.complete(PROMPTS, GenerationConfig(**{**SAMPLED.to_dict(), "seed": 4}))
    assert first == again
    assert first != other_seed
    assert all(len(texts) == 3 and len(set(texts)) > 1 for texts in first)


def test_stop_sequences_cut(hf):
    full = hf.complete(PROMPTS[:1], GenerationConfig(max_new_tokens=40))[0][0]
    stop = ascii_piece(full)
    config = GenerationConfig(max_new_tokens=40, stop=("never appears", stop))
    assert hf.complete(PROMPTS[:1], config)[0][0] == cut_at_stop(full, [stop])


def test_identity_fingerprints_the_folder(hf, hf_folder):
    identity = hf.identity()
    assert identity["backend"] == "huggingface"
    assert identity["model"] == str(hf_folder.resolve())
    assert identity["model_type"] == "llama"
    assert identity["folder_fingerprint"] == folder_fingerprint(hf_folder)


def test_the_fingerprint_reads_only_the_head_of_large_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(bytes(17 * 2**20))
    before = folder_fingerprint(tmp_path)
    with (tmp_path / "model.safetensors").open("r+b") as file:
        file.seek(2**20 + 5)  # past the first MiB: not read
        file.write(b"\1")
    assert folder_fingerprint(tmp_path) == before
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert folder_fingerprint(tmp_path) != before


def test_an_unloadable_model_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ZenCoderError, match="cannot load the Hugging Face model") as caught:
        HuggingFaceGenerator(str(tmp_path))
    assert "\n" not in str(caught.value)
