"""`zen-coder complete`: a prompt is continued exactly as the model's own greedy `generate`
would, streamed in pieces; at a cursor in a file of a real git checkout, the request carries the
file's repository, language and history position, and the completion is the one the server
gives an editor for the same cursor. Bad input is one line."""

from __future__ import annotations

import asyncio
import os

import openai
import pytest
import torch

from tests.gitrepo import GitRepo
from tests.serving.running import running
from zen_coder.cli import main
from zen_coder.data.tokenizer import read_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.inference.prompts import Budget
from zen_coder.model.folder import load_model
from zen_coder.serving.app import create_app
from zen_coder.serving.complete import (
    Sampling,
    complete,
    completion_request,
    cursor_in_file,
    cursor_offset,
    open_context,
)
from zen_coder.serving.native import NativeBackend
from zen_coder.serving.settings import ServerSettings

PROMPT = "def add(a, b):\n    return"
TOKENS = 12
GEOMETRY = "import math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\ndef circumference(r):\n"


def greedy(folder, prompt: str, tokens: int) -> str:
    """The model's own greedy continuation, no channels (a bare prompt has none)."""
    model = load_model(folder).eval()
    roles = read_tokenizer(folder)
    roles.tokenizer.encode_special_tokens = False
    start = [] if roles.bos_id is None else [roles.bos_id]
    ids = torch.tensor([start + roles.tokenizer.encode(prompt).ids])
    with torch.no_grad():
        output = model.generate(ids, tokens, eos_id=roles.eos_id)[0, ids.shape[1] :].tolist()
    if roles.eos_id in output:
        output = output[: output.index(roles.eos_id)]
    return roles.tokenizer.decode(output, skip_special_tokens=False)


def test_a_prompt_is_continued_as_the_model_generates_it(native_folder, capsys):
    """Checked by hand: with the reference fed the prompt less its last token, this failed."""
    assert main(["complete", "--model", str(native_folder), "--prompt", PROMPT,
                 "--max-tokens", str(TOKENS), "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out == greedy(native_folder, PROMPT, TOKENS) + "\n"


def test_the_completion_streams_in_pieces(native_folder, tmp_path):
    from zen_coder.serving.complete import Cursor

    pieces: list[str] = []
    backend = NativeBackend(native_folder, slots=1)
    sampling = Sampling(max_tokens=TOKENS)
    done = complete(backend, Cursor(PROMPT, None), sampling, Budget(), None, pieces.append)
    assert len(pieces) > 1, "the text came in one piece: it was not streamed"
    assert "".join(pieces) == done.text
    assert done.completion_tokens == TOKENS and done.finish_reason == "length"


def geometry_repository(path) -> GitRepo:
    repo = GitRepo(path)
    repo.write("pkg/geometry.py", "import math\n")
    repo.commit("Start the geometry module")
    repo.write("pkg/geometry.py", "import math\n\n\ndef area(r):\n    return math.pi * r * r\n")
    repo.commit("Add the area of a circle")
    repo.write("pkg/geometry.py", GEOMETRY)
    repo.write("pkg/shapes.py", "def circumference_of(shape):\n    return 2 * shape.r\n")
    repo.commit("Start the circumference")
    return repo


def test_a_cursor_in_a_checkout_carries_its_history_channels(native_folder, tmp_path):
    """Repository, language and the file's history position (three changes) reach the request;
    the prompt holds the other file's snippet and the file's recent changes."""
    repo = geometry_repository(tmp_path / "repo")
    backend = NativeBackend(native_folder, slots=1)
    repository = open_context(repo.path, backend)
    cursor = cursor_in_file(repo.path / "pkg/geometry.py", 9, 1)
    assert cursor.prefix == GEOMETRY and cursor.suffix == ""
    # The tests' model has 256 positions and a 400-token vocabulary: a change takes over 100
    # tokens, so the code's shares are kept small to leave room for one.
    budget = Budget(prefix=0.05, suffix=0.05)
    request, snippets, changes = completion_request(
        backend, cursor, Sampling(max_tokens=TOKENS), budget, repository
    )
    assert (request.language, request.repo, request.time) == ("Python", "repo", 3)
    assert snippets >= 1 and changes >= 1
    assert "def circumference_of(shape)" in request.text
    assert "Start the geometry module" in request.text


def test_complete_gives_what_the_server_gives_an_editor(native_folder, tmp_path, capsys):
    """The same cursor through `zen-coder complete` and through the server's /v1/completions
    with `suffix` and `path`, both with the checkout as context."""
    repo = geometry_repository(tmp_path / "repo")
    text = (repo.path / "pkg/geometry.py").read_text()
    offset = cursor_offset(text, 5, 5, "geometry.py")
    argv = ["complete", str(repo.path / "pkg/geometry.py"), "--model", str(native_folder)]
    argv += ["--line", "5", "--column", "5", "--max-tokens", str(TOKENS), "--quiet"]
    argv += ["--multiline", "multi"]
    assert main(argv) == 0
    from_command = capsys.readouterr().out.removesuffix("\n")

    from zen_coder.serving.app import open_repository

    backend = NativeBackend(native_folder, slots=1)
    repository = open_repository(repo.path, backend)
    repository.refresh()
    with running(create_app(backend, ServerSettings(), repository)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        answer = client.completions.create(
            model="zen-coder",
            prompt=text[:offset],
            suffix=text[offset:],
            max_tokens=TOKENS,
            temperature=0,
            extra_body={"path": str(repo.path / "pkg/geometry.py"), "multiline": "multi"},
        )
    repository.close()
    assert from_command == answer.choices[0].text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--line", "99"], "line 99 is outside"),
        (["--line", "1", "--column", "40"], "column 40 is outside line 1"),
        (["--column", "3"], "--column needs --line"),
    ],
)
def test_a_cursor_outside_the_file_is_one_line(native_folder, tmp_path, capsys, argv, message):
    file = tmp_path / "a.py"
    file.write_text("x = 1\n")
    assert main(["complete", str(file), "--model", str(native_folder), *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1


def test_a_missing_file_or_no_input_is_one_line(native_folder, tmp_path, capsys):
    assert main(["complete", str(tmp_path / "nope.py"), "--model", str(native_folder)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["complete", "--model", str(native_folder)]) == 2
    assert "pass a FILE" in capsys.readouterr().err
    with pytest.raises(ZenCoderError, match="outside"):
        cursor_offset("a\nb", 3, 1, "x")


def test_a_local_model_on_the_cpu_leaves_a_core_to_the_requests(native_folder):
    """torch's threads: every core but one by default (its spinning workers starved the event
    loop: a streamed completion took three times as long on 2 cores), or as many as asked."""
    from zen_coder.serving.backends import cpu_threads, open_backend

    before = torch.get_num_threads()
    try:
        backend = open_backend(str(native_folder), slots=1, threads=1)
        asyncio.run(backend.close())
        assert torch.get_num_threads() == 1
        assert cpu_threads() == max(1, len(os.sched_getaffinity(0)) - 1) and cpu_threads(3) == 3
        with pytest.raises(ZenCoderError, match="--threads 0"):
            cpu_threads(0)
    finally:
        torch.set_num_threads(before)
