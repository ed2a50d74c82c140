"""The endpoints editors call, with the bodies they send: llama.vim's /infill (its exact request,
including the cache warm-up with n_predict 0), Tabby's /v1/completions with `segments`,
/v1/events and /v1/health, and /health. Events and completions show up in /metrics."""

from __future__ import annotations

import httpx
import pytest

from tests.serving.running import running
from zen_coder.serving.app import create_app
from zen_coder.serving.settings import ServerSettings

SETTINGS = ServerSettings(model_name="tiny-coder")

# What llama.vim (autoload/llama.vim, llama#fim) posts: the lines above the cursor, the cursor
# line's start as `prompt`, ring-buffer chunks of other files, llama.cpp sampler settings.
LLAMA_VIM_FIELDS = [
    "content",
    "timings/prompt_n",
    "timings/prompt_ms",
    "timings/prompt_per_token_ms",
    "timings/prompt_per_second",
    "timings/predicted_n",
    "timings/predicted_ms",
    "timings/predicted_per_token_ms",
    "timings/predicted_per_second",
    "truncated",
    "tokens_cached",
]
LLAMA_VIM_BODY = {
    "input_prefix": "import os\n\n\ndef list_python_files(folder):\n",
    "input_suffix": "\n\nprint(list_python_files('.'))\n",
    "input_extra": [
        {
            "text": "def is_python(name):\n    return name.endswith('.py')\n",
            "time": [1733, 5],
            "filename": "util.py",
        },
    ],
    "prompt": "    ",
    "n_predict": 8,
    "n_indent": 4,
    "top_k": 40,
    "top_p": 0.90,
    "stream": False,
    "samplers": ["top_k", "top_p", "infill"],
    "cache_prompt": True,
    "t_max_prompt_ms": 500,
    "t_max_predict_ms": 250,
    "response_fields": LLAMA_VIM_FIELDS,
}
# What Tabby's agent posts (crates/tabby/src/services/completion.rs, CompletionRequest).
TABBY_BODY = {
    "language": "python",
    "segments": {
        "prefix": "def list_python_files(folder):\n    ",
        "suffix": "\n\nprint(list_python_files('.'))\n",
        "filepath": "tools/files.py",
        "git_url": "https://github.com/example/tools.git",
        "declarations": [{"filepath": "tools/util.py", "body": "def is_python(name): ..."}],
        "relevant_snippets_from_changed_files": [
            {
                "filepath": "tools/walk.py",
                "body": "for root, _, names in os.walk(top):",
                "score": 0.8,
            }
        ],
        "relevant_snippets_from_recently_opened_files": [],
        "clipboard": "os.listdir",
    },
    "user": "alice",
    "temperature": 0.0,
    "seed": 1,
    "mode": "standard",
}


@pytest.fixture(scope="module")
def url(hf_backend):
    with running(create_app(hf_backend, SETTINGS)) as url:
        yield url


def metric(url: str, line_start: str) -> float:
    """The value of the first /metrics line that starts with `line_start` (0 when absent)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_is_open_and_ok(url):
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_llama_vim_infill_gets_the_fields_it_asks_for(url, hf_backend):
    answer = httpx.post(f"{url}/infill", json=LLAMA_VIM_BODY)
    assert answer.status_code == 200
    fields = answer.json()
    assert sorted(fields) == sorted(LLAMA_VIM_FIELDS)
    assert isinstance(fields["content"], str)
    assert fields["timings/predicted_n"] <= 8
    # The prompt holds the prefix, the cursor line, the other file's chunk and the suffix.
    assert fields["timings/prompt_n"] > hf_backend.count(LLAMA_VIM_BODY["input_prefix"]) + 10


def test_llama_vim_warm_up_request_generates_nothing(url):
    body = {
        **LLAMA_VIM_BODY,
        "input_prefix": "",
        "input_suffix": "",
        "prompt": "",
        "n_predict": 0,
        "response_fields": [""],
    }
    answer = httpx.post(f"{url}/infill", json=body)
    assert answer.status_code == 200


def test_infill_streams_as_llama_cpp_does(url):
    body = {**LLAMA_VIM_BODY, "stream": True, "response_fields": None}
    events = httpx.post(f"{url}/infill", json=body).text.strip().split("\n\n")
    pieces = [httpx.Response(200, content=event.removeprefix("data: ")).json() for event in events]
    assert [piece["stop"] for piece in pieces] == [False] * (len(pieces) - 1) + [True]
    assert "tokens_cached" in pieces[-1]


def test_tabby_completion_and_its_events(url):
    answer = httpx.post(f"{url}/v1/completions", json=TABBY_BODY)
    assert answer.status_code == 200
    completion = answer.json()
    assert completion["id"].startswith("cmpl-")
    assert [choice["index"] for choice in completion["choices"]] == [0]
    assert isinstance(completion["choices"][0]["text"], str)
    before = metric(url, 'zen_coder_completion_events_total{type="select"}')
    event = {
        "type": "select",
        "completion_id": completion["id"],
        "choice_index": 0,
        "view_id": "view-1",
        "elapsed": 1200,
    }
    assert httpx.post(f"{url}/v1/events", json=event).status_code == 200
    assert metric(url, 'zen_coder_completion_events_total{type="select"}') == before + 1


def test_tabby_debug_options_return_the_prompt_with_the_editors_context(url):
    body = {**TABBY_BODY, "debug_options": {"return_prompt": True, "return_snippets": True}}
    debug = httpx.post(f"{url}/v1/completions", json=body).json()["debug_data"]
    assert "def is_python(name)" in debug["prompt"]
    assert "os.walk(top)" in debug["prompt"]
    assert "tools/files.py" in debug["prompt"]
    assert "example/tools" in debug["prompt"]  # the repository, named from git_url as mining does
    assert {snippet["filepath"] for snippet in debug["snippets"]} == {
        "tools/util.py",
        "tools/walk.py",
    }


def test_tabby_health_names_the_model(url):
    health = httpx.get(f"{url}/v1/health").json()
    assert health["model"] == "tiny-coder"
    assert httpx.post(f"{url}/v1/health").json() == health
    assert {"device", "arch", "cpu_count", "version"} <= set(health)


def test_metrics_count_requests_tokens_and_latency(url):
    before = metric(url, 'zen_coder_requests_total{endpoint="/infill",status="200"}')
    tokens = metric(url, "zen_coder_completion_tokens_total")
    answer = httpx.post(f"{url}/infill", json={**LLAMA_VIM_BODY, "response_fields": None}).json()
    assert metric(url, 'zen_coder_requests_total{endpoint="/infill",status="200"}') == before + 1
    assert metric(url, "zen_coder_completion_tokens_total") == tokens + answer["tokens_predicted"]
    assert metric(url, 'zen_coder_request_seconds_count{endpoint="infill"}') >= 1
    text = httpx.get(f"{url}/metrics").text
    for name in (
        "zen_coder_queue_depth",
        "zen_coder_active_requests",
        "zen_coder_prompt_tokens_cached_total",
        "zen_coder_time_to_first_token_seconds",
    ):
        assert name in text
