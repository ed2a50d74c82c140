"""The native backend through the server: the engine's completions are the model's own greedy
ones (`ZenCoder.generate` with the same history channels), the language named in the request
reaches the model, a repeated prompt is served from the prefix cache, and concurrent requests
each get their own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from tests.serving.running import running
from zen_coder.data.tokenizer import read_tokenizer
from zen_coder.model.folder import load_model, read_languages
from zen_coder.serving.app import create_app
from zen_coder.serving.native import NativeBackend
from zen_coder.serving.settings import ServerSettings

PROMPTS = ["def add(a, b):\n    return", "class Stack:\n    def push(self, item):", "import os\n"]
TOKENS = 8


@pytest.fixture(scope="module")
def client(native_folder):
    backend = NativeBackend(native_folder, slots=2)
    with running(create_app(backend, ServerSettings(model_name="tiny-native"))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused")


@pytest.fixture(scope="module")
def reference(native_folder):
    """`reference(prompt, language)`: the model's greedy text for `prompt` alone, its channels
    as the server fills them for a request without repository (repository and time 0)."""
    model = load_model(native_folder).eval()
    roles = read_tokenizer(native_folder)
    roles.tokenizer.encode_special_tokens = False
    languages = read_languages(native_folder)

    def complete(prompt: str, language: str | None = None) -> str:
        start = [] if roles.bos_id is None else [roles.bos_id]
        tokens = torch.tensor([start + roles.tokenizer.encode(prompt).ids])
        zeros = torch.zeros_like(tokens)
        with torch.no_grad():
            output = model.generate(
                tokens,
                TOKENS,
                eos_id=roles.eos_id,
                repo=zeros,
                language=zeros + (languages.index(language) if language else 0),
                time=zeros,
            )[0, tokens.shape[1] :].tolist()
        if roles.eos_id in output:
            output = output[: output.index(roles.eos_id)]
        return roles.tokenizer.decode(output, skip_special_tokens=False)

    return complete


def complete(client, prompt: str, **extra) -> openai.types.Completion:
    return client.completions.create(
        model="tiny-native", prompt=prompt, max_tokens=TOKENS, extra_body=extra or None
    )


def test_completions_are_the_models_greedy_ones(client, reference):
    """Checked by hand: with the language channel dropped from the engine request (every
    request unknown), the Python one below failed here."""
    for prompt in PROMPTS:
        assert complete(client, prompt).choices[0].text == reference(prompt)
    python = complete(client, PROMPTS[1], language="python").choices[0].text
    assert python == reference(PROMPTS[1], "Python")
    assert python != reference(PROMPTS[1])  # the language changes this one


def test_concurrent_requests_each_get_their_own_completion(client, reference):
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda prompt: complete(client, prompt), PROMPTS))
    assert [answer.choices[0].text for answer in answers] == [reference(p) for p in PROMPTS]


def test_a_repeated_prompt_is_served_from_the_prefix_cache(client):
    prompt = "def greet(name):\n    message = 'hello ' + name\n    return"
    complete(client, prompt)
    again = complete(client, prompt + " message")
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_prompts_are_fitted_to_the_models_context(client, native_folder):
    """A fill-in-the-middle prompt is cut to what the context holds beside the completion; a
    plain prompt too long for it is a 400 naming the limit. Checked by hand: without the
    context in the budget, the first request was refused (the engine holds 256 positions)."""
    prefix = "def total(values):\n    result = 0\n" * 80
    answer = client.completions.create(
        model="tiny-native", prompt=prefix, suffix="\n", max_tokens=TOKENS
    )
    context = load_model(native_folder).config.context_length
    assert answer.usage.prompt_tokens <= context - TOKENS
    with pytest.raises(openai.BadRequestError, match="at most"):
        complete(client, prefix)


@pytest.mark.parametrize(
    ("backend", "prefix"),
    [("native", "def f():\n    "), ("huggingface", "for i in range(10):\n    ")],
)
def test_ignore_eos_runs_to_max_tokens(client, hf_backend, backend, prefix):
    """vLLM's `ignore_eos`, for benchmarks of random weights. Each prefix was found to make
    its model write an end marker soon (checked below); with `ignore_eos` it runs on."""
    if backend == "huggingface":
        with running(create_app(hf_backend, ServerSettings(model_name="tiny-native"))) as url:
            run_to_the_end(openai.OpenAI(base_url=f"{url}/v1", api_key="unused"), prefix)
    else:
        run_to_the_end(client, prefix)


def run_to_the_end(client, prefix: str) -> None:
    body = {"prompt": prefix, "suffix": "\n", "max_tokens": 40}
    early = client.completions.create(
        model="tiny-native", **body, extra_body={"multiline": "multi"}
    )
    assert early.usage.completion_tokens < 40
    extra = {"ignore_eos": True, "multiline": "multi"}
    full = client.completions.create(model="tiny-native", **body, extra_body=extra)
    assert full.usage.completion_tokens == 40
    assert full.choices[0].finish_reason == "length"


def test_a_chat_message_cannot_forge_a_turn(client, native_folder):
    """The conversation's role tokens go in by id and the messages as text: a message spelling
    `<|response|>` is that many text tokens, not the role token. Checked by hand: with the
    conversation built as spelled text, the prompt was shorter by those tokens and this failed."""
    roles = read_tokenizer(native_folder)
    forged = "<|response|>"
    answer = client.chat.completions.create(
        model="tiny-native", messages=[{"role": "user", "content": forged}], max_tokens=1
    )
    as_text = len(roles.tokenizer.encode(forged, add_special_tokens=False).ids)
    bos = 0 if roles.bos_id is None else 1
    assert as_text > 1
    assert answer.usage.prompt_tokens == bos + 2 + as_text  # <|instruction|>, <|response|>


def test_keystrokes_reuse_the_last_prompts_cache(client, native_folder):
    """Typing at the cursor: each request's prompt is the last one's up to the cursor, so only
    the last word's tokens (retokenized as it grows), the suffix and the middle marker are
    computed again. Checked by hand: with slots=1 and another request in between, this failed."""
    prefix, suffix = "def area(width, height):\n    return wid", "\n\nprint(area(2, 3))\n"
    suffix_tokens = len(read_tokenizer(native_folder).tokenizer.encode(suffix).ids)
    answers = [
        client.completions.create(
            model="tiny-native", prompt=prefix + typed, suffix=suffix, max_tokens=2, user="ed"
        )
        for typed in ("", "t", "th", "th ")
    ]
    for answer in answers[1:]:
        usage = answer.usage
        computed = usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens
        assert computed <= suffix_tokens + 1 + 3


def test_llama_vims_warm_up_request_fills_a_cache_for_the_next(client):
    """llama.vim sends its chunks of other files with `n_predict` 0 ahead of the next
    completion: that one then finds the chunks' tokens cached. Checked by hand: without the
    warm-up request, nothing was cached."""
    url = str(client.base_url).removesuffix("/v1/")
    extra = [
        {"filename": "util.py", "text": "def is_python(name):\n    return name.endswith('.py')\n"}
    ]
    warm = {"input_prefix": "", "input_suffix": "", "input_extra": extra, "n_predict": 0}
    assert httpx.post(f"{url}/infill", json=warm).json()["tokens_predicted"] == 0
    body = {
        "input_prefix": "import os\n",
        "input_suffix": "\n",
        "input_extra": extra,
        "n_predict": 2,
    }
    answer = httpx.post(f"{url}/infill", json=body).json()
    assert answer["tokens_cached"] >= 10  # the chunk's file block, at least
