"""The native backend with a repository gives each prompt token the time training gives it (the
ages of the edited file's lines, the history block's change positions) and the engine computes
with them: its tokens are `ZenCoder.generate`'s with the same times, and an editor's two
keystrokes share their prompt's cached start through the server."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import openai
import pytest
import torch

from tests.gitrepo import GitRepo
from tests.models import LANGUAGE_TABLE, NO_REPOSITORIES, native_config, tokenizer_folder  # noqa: F401
from tests.serving.running import running
from zen_coder.data.tokenizer import read_tokenizer
from zen_coder.inference.engine import CutOff
from zen_coder.inference.prompts import Budget
from zen_coder.model.folder import load_model, read_languages, save_model
from zen_coder.model.model import ZenCoder
from zen_coder.serving.app import create_app, open_repository
from zen_coder.serving.complete import Cursor, Sampling, completion_request, open_context
from zen_coder.serving.native import NativeBackend
from zen_coder.serving.settings import ServerSettings

TOKENS = 6
FIRST = "import math\n\n\ndef area(r):\n    return math.pi * r * r\n"
HEAD = FIRST + "\n\ndef circumference(r):\n    return 2 * math.pi * r\n"
# The tests' model has 256 positions: small shares leave room for a change of the file.
BUDGET = Budget(prefix=0.3, suffix=0.1)


@pytest.fixture(scope="module")
def timed_folder(tmp_path_factory, tokenizer_folder):  # noqa: F811 - the fixture imported above
    """The tests' small model with its temporal attention drawn large, so that times a few
    positions apart change its tokens: at initialization its bias is too small for a time
    channel the server dropped to show in the text."""
    config = native_config(tokenizer_folder)
    torch.manual_seed(0)
    model = ZenCoder(config)
    with torch.no_grad():
        for block in model.blocks:
            block.attention.temporal.weight.normal_(std=8.0)
    folder = tmp_path_factory.mktemp("timed") / "model"
    save_model(
        folder, config, model.state_dict(), LANGUAGE_TABLE, tokenizer_folder, repos=NO_REPOSITORIES
    )
    return folder


def repository(path) -> GitRepo:
    repo = GitRepo(path)
    repo.write("pkg/geometry.py", "import math\n")
    repo.commit("Start the geometry module")
    repo.write("pkg/geometry.py", FIRST)
    repo.commit("Add the area of a circle")
    repo.write("pkg/geometry.py", HEAD)
    repo.commit("Add the circumference")
    return repo


def collect(backend: NativeBackend, request) -> str:
    async def run() -> str:
        return "".join([piece.text async for piece in backend.stream(request)])

    return asyncio.run(run())


def test_the_engine_gets_each_tokens_time_and_answers_as_generate(timed_folder, tmp_path):
    """The text is generate's with the prompt's times, and not generate's with the file's one
    time. Checked by hand to fail: with the native backend leaving `times` out of the engine
    request (every token at the file's one time). The engine's own check against generate with
    per-token times: tests/inference/test_engine.py (several times)."""
    repo = repository(tmp_path / "repo")
    backend = NativeBackend(timed_folder, slots=1)
    context = open_context(repo.path, backend)
    typed = "def diameter(r):\n    return 2 *"
    cursor = Cursor(HEAD + "\n\n" + typed, "\n", repo.path / "pkg/geometry.py")
    request, _, _ = completion_request(
        backend, cursor, Sampling(max_tokens=TOKENS), BUDGET, context
    )
    ids, times = backend.ids_and_times(request)
    assert times is not None and len(times) == len(ids)
    assert {1, 2, 3, 4} <= set(times)  # line ages 1 to 3, typed lines 4
    keep_all = CutOff(multiline="multi")
    request = replace(request, cutoff=keep_all, ignore_eos=True)
    served = collect(backend, request)

    model = load_model(timed_folder).eval()
    roles = read_tokenizer(timed_folder)
    language = read_languages(timed_folder).index("Python")
    tokens = torch.tensor([ids])
    zeros = torch.zeros_like(tokens)

    def generate(time: torch.Tensor) -> str:
        with torch.no_grad():
            output = model.generate(
                tokens, TOKENS, repo=zeros, language=zeros + language, time=time
            )
        return roles.tokenizer.decode(output[0, len(ids) :].tolist(), skip_special_tokens=False)

    assert served == generate(torch.tensor([times]))
    assert served != generate(zeros + request.time)
    asyncio.run(backend.close())
    context.close()


def test_two_keystrokes_share_the_cached_prompt_start(native_folder, tmp_path):
    """The typed line's time stays the same as it grows, so the second request finds the
    first's prompt start cached. Checked by hand to fail: with the typed lines' time counting
    the buffer's characters, nothing was cached."""
    repo = repository(tmp_path / "repo")
    backend = NativeBackend(native_folder, slots=1)
    context = open_repository(repo.path, backend)
    context.refresh()
    path = str(repo.path / "pkg/geometry.py")
    settings = ServerSettings(prefix_share=BUDGET.prefix, suffix_share=BUDGET.suffix)
    with running(create_app(backend, settings, context)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        answers = [
            client.completions.create(
                model="zen-coder",
                prompt=HEAD + "\n\ndef diameter(r):\n    return 2" + typed,
                suffix="\n",
                max_tokens=2,
                user="ed",
                extra_body={"path": path},
            )
            for typed in (" *", " * r")
        ]
    context.close()
    usage = answers[1].usage
    assert usage.prompt_tokens_details.cached_tokens > usage.prompt_tokens // 2
