"""OpenAI's endpoints through the `openai` package against a real server: /v1/models, completions
(plain and fill-in-the-middle through the model's own layout), chat, streamed and not. The texts
are compared with transformers' own greedy decoding of the same token ids."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from tests.serving.running import running
from zen_coder.inference.prompts import Budget, PromptParts
from zen_coder.inference.stopping import CutOff, TextCutter
from zen_coder.serving.app import create_app
from zen_coder.serving.settings import ServerSettings

SETTINGS = ServerSettings(model_name="tiny-coder")
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def url(hf_backend):
    with running(create_app(hf_backend, SETTINGS)) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused")


def reference(backend, ids: list[int], max_tokens: int) -> str:
    """transformers' greedy continuation of `ids`, decoded as the server shows text (special
    tokens spelled, the end of text left out)."""
    with torch.no_grad():
        output = backend.model.generate(
            torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0
        )
    new = [t for t in output[0, len(ids) :].tolist() if t != backend.tokenizer.eos_token_id]
    return backend.tokenizer.decode(new, skip_special_tokens=False)


def test_models_lists_the_served_name(client):
    assert [model.id for model in client.models.list()] == ["tiny-coder"]


def test_a_plain_completion_is_the_models_greedy_continuation(client, hf_backend):
    """Checked by hand: with the streamer's first `put` (the prompt) taken as generated text,
    the completion started with the prompt again and failed here."""
    answer = client.completions.create(model="tiny-coder", prompt=PREFIX, max_tokens=10)
    ids = hf_backend.tokenizer(PREFIX)["input_ids"]
    assert answer.choices[0].text == reference(hf_backend, ids, 10)
    assert answer.usage.prompt_tokens == len(ids)
    assert answer.choices[0].finish_reason in ("length", "stop")


def test_suffix_fills_in_the_middle_in_the_models_layout(client, hf_backend):
    """The prompt is the model's fill-in-the-middle layout around prefix and suffix (its token
    count says so), and the text its continuation under the editor's line rules. Checked by
    hand: with the suffix ignored (the prompt continued as plain text) this failed."""
    answer = client.completions.create(
        model="tiny-coder",
        prompt=PREFIX,
        suffix=SUFFIX,
        max_tokens=10,
        extra_body={"multiline": "multi"},
    )
    built = hf_backend.prompt_format.build(
        PromptParts(prefix=PREFIX, suffix=SUFFIX),
        Budget(SETTINGS.context_tokens, 0.5, 0.2),
        hf_backend.count,
    )
    bos = hf_backend.roles.bos_id
    ids = ([] if bos is None else [bos]) + built.ids(hf_backend.roles.tokenizer)
    assert answer.usage.prompt_tokens == len(ids)
    cutter = TextCutter(
        CutOff(stop=hf_backend.prompt_format.stop, multiline="multi", suffix=SUFFIX), PREFIX
    )
    expected = cutter.push(reference(hf_backend, ids, 10)) + cutter.flush()
    assert answer.choices[0].text == expected


def test_streaming_sends_the_same_text_in_pieces_and_ends_with_done(client, url):
    whole = client.completions.create(model="tiny-coder", prompt=PREFIX, max_tokens=10)
    chunks = list(
        client.completions.create(
            model="tiny-coder",
            prompt=PREFIX,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    body = {"prompt": PREFIX, "max_tokens": 3, "stream": True}
    lines = httpx.post(f"{url}/v1/completions", json=body).text.strip().split("\n\n")
    assert lines[-1] == "data: [DONE]"


def test_n_completions_each_have_their_index(client):
    answer = client.completions.create(
        model="tiny-coder", prompt=PREFIX, max_tokens=4, n=2, temperature=1.0, seed=5
    )
    assert [choice.index for choice in answer.choices] == [0, 1]


def test_stop_sequences_end_the_completion(client, hf_backend):
    """Stop at the second character the model writes: the text is the first one."""
    ids = hf_backend.tokenizer(PREFIX)["input_ids"]
    full = reference(hf_backend, ids, 10)
    stop = full[1:3]
    answer = client.completions.create(model="tiny-coder", prompt=PREFIX, max_tokens=10, stop=stop)
    assert answer.choices[0].text == full[: full.index(stop)]
    assert answer.choices[0].finish_reason == "stop"


def test_chat_answers_whole_and_streamed(client):
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Add two numbers."},
    ]
    whole = client.chat.completions.create(model="tiny-coder", messages=messages, max_tokens=6)
    assert whole.choices[0].message.role == "assistant"
    streamed = client.chat.completions.create(
        model="tiny-coder", messages=messages, max_tokens=6, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == whole.choices[0].message.content


def test_zero_max_tokens_generates_nothing(client):
    answer = client.completions.create(model="tiny-coder", prompt=PREFIX, max_tokens=0)
    assert answer.choices[0].text == "" and answer.usage.completion_tokens == 0
