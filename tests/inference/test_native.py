"""The native backend: greedy decoding is the model's argmax, sampling follows the seed, stop
sequences cut and end generation, batches of different-length prompts change nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.data import bases
from tests.inference.channel_model import REPOS, channel_model_folder
from tests.inference.prompts import PROMPTS, ascii_piece
from tests.models import LANGUAGE_TABLE, NO_REPOSITORIES, native_config
from zen_coder.data.tokenizer import load_tokenizer, read_tokenizer, save_base_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.history.languages import LANGUAGES
from zen_coder.inference.channels import PROMPT_TIME
from zen_coder.inference.generation import GenerationConfig, cut_at_stop
from zen_coder.inference.native import NativeGenerator
from zen_coder.model.folder import load_model, read_config, save_model
from zen_coder.model.model import ZenCoder

GREEDY = GenerationConfig(max_new_tokens=12)
SAMPLED = GenerationConfig(n=4, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)


@pytest.fixture(scope="module")
def native(native_folder) -> NativeGenerator:
    return NativeGenerator(native_folder)


@pytest.fixture(scope="module")
def fine_tuned_folder(tmp_path_factory) -> Path:
    """A native model as a run fine-tuned from a CodeLlama-shaped base saves it: its tokenizer is
    the prepared data's (the base's, extended), so <s> starts a text and </s> ends one."""
    root = tmp_path_factory.mktemp("fine-tuned")
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    save_base_tokenizer(read_tokenizer(bases.codellama(root / "base").path), tokenizer, 256)
    config = native_config(tokenizer)
    torch.manual_seed(0)
    folder = root / "model"
    save_model(
        folder,
        config,
        ZenCoder(config).state_dict(),
        LANGUAGE_TABLE,
        tokenizer,
        repos=NO_REPOSITORIES,
    )
    return folder


def hand_rolled_greedy(
    folder, ids: list[int], steps: int, repo: int = 0, language: int = 0, time: int = 0
) -> str:
    """Greedy decoding the long way: the whole sequence through the model for every token, with
    every token's channels given by id (0, the unknown repository and language, as training
    gives a sample of neither)."""
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    eos = read_tokenizer(folder).eos_id
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            tokens = torch.tensor([ids + new])
            channels = {
                "repo": torch.full_like(tokens, repo),
                "language": torch.full_like(tokens, language),
                "time": torch.full_like(tokens, time),
            }
            token = int(model(tokens, **channels).logits[0, -1].argmax())
            if token == eos:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=False)


def encode(folder, text: str) -> list[int]:
    return load_tokenizer(folder).encode(text, add_special_tokens=False).ids


def test_greedy_completions_are_the_models_argmax(native, native_folder):
    completions = native.complete(PROMPTS, GREEDY)
    expected = [
        hand_rolled_greedy(native_folder, encode(native_folder, prompt), GREEDY.max_new_tokens)
        for prompt in PROMPTS
    ]
    assert [texts[0] for texts in completions] == expected
    assert any(expected)


def test_special_tokens_spelled_in_a_prompt_are_those_tokens(native, native_folder):
    ids = read_tokenizer(native_folder).ids
    prompt = "<|repo|>zen<|path|>a.py<|before|>x = 1\n<|after|>"
    by_id = [ids["<|repo|>"], *encode(native_folder, "zen"), ids["<|path|>"]]
    by_id += [*encode(native_folder, "a.py"), ids["<|before|>"], *encode(native_folder, "x = 1\n")]
    by_id.append(ids["<|after|>"])
    expected = hand_rolled_greedy(native_folder, by_id, GREEDY.max_new_tokens)
    assert native.complete([prompt], GREEDY) == [[expected]]


def test_greedy_gives_n_equal_completions(native):
    completions = native.complete(PROMPTS[:1], GenerationConfig(n=3, max_new_tokens=8))
    assert len(completions[0]) == 3 and len(set(completions[0])) == 1


def test_batches_of_different_length_prompts_equal_one_by_one(native):
    config = GenerationConfig(max_new_tokens=12, extra={"language": "Python"})
    batched = native.complete(PROMPTS, config)
    alone = [native.complete([prompt], config)[0] for prompt in PROMPTS]
    assert batched == alone


def test_sampling_follows_the_seed(native):
    first, again = native.complete(PROMPTS, SAMPLED), native.complete(PROMPTS, SAMPLED)
    other_seed = native.complete(PROMPTS, GenerationConfig(**{**SAMPLED.to_dict(), "seed": 8}))
    assert first == again
    assert first != other_seed
    assert all(len(texts) == 4 and len(set(texts)) > 1 for texts in first)


def test_batch_size_counts_rows(native):
    small_batches = GenerationConfig(**{**SAMPLED.to_dict(), "batch_size": 3})
    completions = native.complete(PROMPTS, small_batches)
    assert [len(texts) for texts in completions] == [4, 4, 4]


def test_stop_sequences_cut_and_end_generation_early(native, monkeypatch):
    long = GenerationConfig(max_new_tokens=200)
    full = native.complete(PROMPTS[:1], long)[0][0]
    stop = ascii_piece(full)
    generated = []
    generate = native.model.generate

    def spy(*args, **kwargs):
        generated.append(out := generate(*args, **kwargs))
        return out

    monkeypatch.setattr(native.model, "generate", spy)
    stopped = native.complete(PROMPTS[:1], GenerationConfig(max_new_tokens=200, stop=(stop,)))
    assert stopped[0][0] == cut_at_stop(full, [stop]) == full[: full.index(stop)]
    prompt_length = len(native.tokenizer.encode(PROMPTS[0], add_special_tokens=False).ids)
    assert generated[0].shape[1] - prompt_length < 200


def test_language_reaches_the_router(native):
    python = native.complete(
        PROMPTS, GenerationConfig(max_new_tokens=12, extra={"language": "python"})
    )
    unknown = native.complete(
        PROMPTS, GenerationConfig(max_new_tokens=12, extra={"language": "Ada"})
    )
    assert python != unknown
    assert unknown == native.complete(PROMPTS, GenerationConfig(max_new_tokens=12))


def test_a_reordered_mining_list_leaves_the_models_language_ids_alone(native_folder, monkeypatch):
    """A prompt's language reaches the router by the id the model was trained with, read from
    the model folder's table, whatever later happens to the mining stage's list.

    Checked by hand on the code before the folder carried its table (ids from the mining
    stage's list): under the reversed list Python and Makefile completed differently, and the
    test failed."""
    trained_order = LANGUAGES  # the table of `native_folder`, after the unknown language
    sample = ("Python", "Go", "Markdown", "Makefile")  # a completion costs, an id lookup not
    settings = {
        name: GenerationConfig(max_new_tokens=8, extra={"language": name}) for name in sample
    }
    generator = NativeGenerator(native_folder)
    trained = {name: generator.complete(PROMPTS[:1], config) for name, config in settings.items()}
    for module in list(sys.modules.values()):  # every module that holds the list by name
        if getattr(module, "LANGUAGES", None) is trained_order:
            monkeypatch.setattr(module, "LANGUAGES", trained_order[::-1])
    reloaded = NativeGenerator(native_folder)
    completions = {
        name: reloaded.complete(PROMPTS[:1], config) for name, config in settings.items()
    }
    assert completions == trained
    ids = [reloaded.language_id(name) for name in trained_order]
    assert ids == list(range(1, len(trained_order) + 1))


def test_identity_names_the_exact_model(native, native_folder):
    identity = native.identity()
    weights = (native_folder / "model.safetensors").read_bytes()
    assert identity["backend"] == "native"
    assert identity["path"] == str(native_folder.resolve())
    assert identity["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert identity["config"]["d_model"] == 64 and identity["config"]["language_routing"]
    assert identity["dtype"] == "float32"


def test_bad_inputs_are_one_line_errors(native_folder, native):
    with pytest.raises(ZenCoderError, match="unknown dtype 'fp8'"):
        NativeGenerator(native_folder, dtype="fp8")
    with pytest.raises(ZenCoderError, match="not a zen-coder model"):
        NativeGenerator(native_folder.parent)
    with pytest.raises(ZenCoderError, match="prompt is empty"):
        native.complete([""], GREEDY)


def test_a_fine_tuned_models_prompts_start_with_the_bases_bos(fine_tuned_folder, tmp_path):
    """`prepare` started every sample with <s>; so does every prompt. The comparison can fail:
    the attention outputs are made large, so that what a prompt starts with reaches the next
    token (a random model's greedy text depends on the last token only), and a prompt without
    <s> then continues differently. Broken by hand once (no <s> prepended), it failed."""
    folder = tmp_path / "model"
    shutil.copytree(fine_tuned_folder, folder)
    model = load_model(folder)
    bos = read_tokenizer(folder).bos_id
    with torch.no_grad():
        for block in model.blocks:
            block.attention.o.weight *= 100
    save_model(
        folder, model.config, model.state_dict(), LANGUAGE_TABLE, folder, repos=NO_REPOSITORIES
    )
    ids = encode(folder, PROMPTS[0])
    with_bos = hand_rolled_greedy(folder, [bos, *ids], GREEDY.max_new_tokens)
    assert hand_rolled_greedy(folder, ids, GREEDY.max_new_tokens) != with_bos
    assert NativeGenerator(folder).complete(PROMPTS[:1], GREEDY) == [[with_bos]]


def test_a_fine_tuned_model_stops_at_the_bases_eos(fine_tuned_folder, tmp_path):
    """The output row of </s> is scaled so that the model's first token is </s>: the completion
    is empty. Broken by hand once: ending at the token named <|endoftext|>, as before (this
    tokenizer has none), ran on and returned "</s></s>..."."""
    model = load_model(fine_tuned_folder)
    tokenizer = read_tokenizer(fine_tuned_folder)
    eos = tokenizer.eos_id
    assert tokenizer.tokenizer.id_to_token(eos) == "</s>"
    prompt = [tokenizer.bos_id, *encode(fine_tuned_folder, PROMPTS[0])]
    with torch.no_grad():
        first = model(torch.tensor([prompt])).logits[0, -1, eos]
        model.head.weight[eos] *= 1000 * first.sign()
    folder = tmp_path / "model"
    save_model(
        folder,
        read_config(fine_tuned_folder),
        model.state_dict(),
        LANGUAGE_TABLE,
        fine_tuned_folder,
        repos=NO_REPOSITORIES,
    )
    assert hand_rolled_greedy(folder, prompt, 1) == ""
    assert NativeGenerator(folder).complete(PROMPTS[:1], GREEDY) == [[""]]


@pytest.fixture(scope="module")
def channel_folder(tmp_path_factory, tokenizer_folder) -> Path:
    return channel_model_folder(tmp_path_factory.mktemp("channels") / "model", tokenizer_folder)


def test_the_repository_reaches_the_model_by_the_folders_id(channel_folder):
    """`extra["repo"]` is the repository embedding of the id the folder's table gives the name;
    an unknown name or none is id 0. Broken by hand once (the repository never passed, as
    before): the web repository's completion equalled the unknown one and the test failed."""
    generator = NativeGenerator(channel_folder)
    language = LANGUAGE_TABLE.index("Python")

    def complete(**extra) -> str:
        config = dataclasses.replace(GREEDY, extra={"language": "Python", **extra})
        return generator.complete(PROMPTS[:1], config)[0][0]

    def expected(repo: int) -> str:
        ids = encode(channel_folder, PROMPTS[0])
        return hand_rolled_greedy(channel_folder, ids, GREEDY.max_new_tokens, repo, language)

    web, tools = complete(repo="github.com/acme/web"), complete(repo="github.com/acme/tools")
    unknown = complete()
    assert web == expected(REPOS.index("github.com/acme/web"))
    assert len({web, tools, unknown}) == 3
    assert complete(repo="github.com/elsewhere/x") == unknown
    assert unknown == hand_rolled_greedy(
        channel_folder, encode(channel_folder, PROMPTS[0]), GREEDY.max_new_tokens, 0, language, 0
    )


def test_one_time_for_a_whole_prompt_changes_nothing(channel_folder):
    """The generator gives every token `PROMPT_TIME`; any other shared time computes the same,
    as its docstring says, while times that differ within the prompt do not (so the model's
    temporal attention is on and the comparison can fail)."""
    model = load_model(channel_folder)
    assert model.config.temporal_attention
    with torch.no_grad():
        for block in model.blocks:
            block.attention.temporal.weight.normal_(std=2.0)
    tokens = torch.tensor([encode(channel_folder, PROMPTS[0])])
    logits = {
        name: model(tokens, time=time).logits
        for name, time in {
            "prompt": torch.full_like(tokens, PROMPT_TIME),
            "later": torch.full_like(tokens, 500),
            "mixed": torch.arange(tokens.shape[1])[None] * 40,
        }.items()
    }
    assert torch.allclose(logits["prompt"], logits["later"], atol=1e-5)
    assert not torch.allclose(logits["prompt"], logits["mixed"], atol=1e-3)
