"""The serving benchmark's editing sessions (benchmarks/editing_sessions.py): typed text, debounce
and windows, from a real repository mined with `zen-coder mine`.

Each test was checked once against a broken variant by hand: `added_runs` not advancing on
context lines, `keystrokes` without auto-indent, `debounced_requests` firing at every key, the
prefix window counting the lines below, and `build_sessions` without taking turns each fail it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.gitrepo import GitRepo
from zen_coder.errors import ZenCoderError
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import editing_sessions as sessions

SALT = b"serve-latency-tests"
TYPING = sessions.Typing(key_interval=0.1, word_pause=0.4, line_pause=1.0, debounce=0.3)


def characters(text: str) -> int:
    """A token count where every character is a token: windows are then easy to check."""
    return len(text)


OLD = "".join(f"line_{i} = {i}\n" for i in range(40))
NEW_LINES = ["def total(values):\n", "    return sum(values)\n"]


def _new_file() -> str:
    lines = OLD.splitlines(keepends=True)
    lines[20:21] = ["line_20 = 'twenty'\n", *NEW_LINES]  # one line replaced, two added
    return "".join(lines)


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> Path:
    """Two real repositories, mined: `app` edits a Python file and a README, `lib` a Go file."""
    root = tmp_path_factory.mktemp("sessions")
    app = GitRepo(root / "app")
    app.write("app.py", OLD)
    app.write("README.md", "# app\n")
    app.commit("Start")
    app.write("app.py", _new_file())
    app.write("README.md", "# app\n\nA long paragraph about the app that is not code at all.\n")
    app.commit("Add total")
    lib = GitRepo(root / "lib")
    lib.write("lib.go", "package lib\n\nfunc A() int {\n\treturn 1\n}\n")
    lib.commit("Start")
    lib.write(
        "lib.go", "package lib\n\nfunc A() int {\n\treturn 1\n}\n\nfunc B() int {\n\treturn 2\n}\n"
    )
    lib.commit("Add B")
    out = root / "mined"
    specs = [RepoSpec(str(app.path), name="app"), RepoSpec(str(lib.path), name="lib")]
    mine(specs, out, workers=1, salt=SALT)
    return out


def test_added_runs_follow_the_new_files_line_numbers():
    diff = (
        "--- a/x.py\n+++ b/x.py\n"
        "@@ -3,4 +3,6 @@ def f():\n"
        " a\n"
        "-b\n"
        "+B\n"
        "+C\n"
        " d\n"
        "+e\n"
        "@@ -20,2 +22,3 @@\n"
        " x\n"
        "+y\n"
        "\\ No newline at end of file\n"
    )
    assert sessions.added_runs(diff) == [(3, 2), (6, 1), (22, 1)]


def test_keystrokes_pause_at_word_and_line_ends_and_auto_indent():
    keys = list(sessions.keystrokes("x = f(a)\n    y", TYPING))
    positions = [position for _, position, _ in keys]
    # Enter brings the four spaces of indentation with it: nine keys, not thirteen.
    assert positions == [1, 2, 3, 4, 5, 6, 7, 8, 13, 14]
    pauses = {position: pause for _, position, pause in keys}
    assert pauses[2] == 0.4  # "x" then a space: a word ended
    assert pauses[6] == 0.4  # "f" then "(": a word ended
    assert pauses[3] == 0.1  # "=" after a space: no word ended
    assert pauses[13] == 1.0  # Enter
    assert pauses[14] == float("inf")  # the last key
    times = [time for time, _, _ in keys]
    assert times[:3] == [0.0, 0.1, 0.5]


def test_requests_come_only_after_pauses_longer_than_the_debounce():
    edit = sessions.Edit("r", "c", "a.py", "Python", "# top\n", "x = f(a)\n    y", "\nz\n")
    requests = sessions.debounced_requests(7, edit, TYPING)
    assert [request.prefix for request in requests] == [
        "# top\nx ",
        "# top\nx = f(",
        "# top\nx = f(a)",
        "# top\nx = f(a)\n    ",
        "# top\nx = f(a)\n    y",
    ]
    assert [round(request.at, 6) for request in requests] == [0.4, 1.1, 1.6, 2.0, 3.0]
    assert {request.suffix for request in requests} == {"\nz\n"}
    assert {request.client for request in requests} == {"session-7"}
    assert [request.index for request in requests] == [0, 1, 2, 3, 4]
    no_debounce = sessions.Typing(debounce=0.05)
    assert len(sessions.debounced_requests(7, edit, no_debounce)) == 10  # every key


def test_an_edit_is_typed_into_the_window_the_editor_sends():
    lines = _new_file().splitlines(keepends=True)
    window = sessions.Window(prefix_tokens=52, suffix_tokens=30, typed_chars=100)
    before, typed, after = sessions.edit_from_lines(lines, (20, 3), window, characters)
    assert typed == "line_20 = 'twenty'\ndef total(values):\n    return sum(values)"
    assert before == "line_16 = 16\nline_17 = 17\nline_18 = 18\nline_19 = 19\n"
    assert after == "\nline_21 = 21\nline_22 = 22\n"
    assert len(before) == 52 and len(after) <= 1 + 30  # four whole lines fill the 52
    assert (before + typed + after) in _new_file()


def test_an_edit_types_whole_lines_within_the_limit_and_skips_trivial_ones():
    lines = ["    def f(self):\n", "        return self.value + 1\n", "x\n"]
    window = sessions.Window(typed_chars=40, min_typed_chars=5)
    before, typed, after = sessions.edit_from_lines(lines, (0, 2), window, characters)
    assert (before, typed) == ("    ", "def f(self):")  # the second line would pass 40
    assert after == "\n        return self.value + 1\nx\n"
    assert sessions.edit_from_lines(lines, (2, 1), window, characters) is None  # "x": too short


def test_sessions_from_a_mined_repository(mined):
    records = sessions.mined_records(mined)
    assert sorted(records) == ["app", "lib"]
    built = sessions.build_sessions(records, characters, limit=10, typing=TYPING)
    by_repo = {session.edit.repo: session for session in built}
    assert sorted(by_repo) == ["app", "lib"]  # the README's change is prose: no session
    app = by_repo["app"]
    assert app.edit.path == "app.py" and app.edit.language == "Python"
    assert app.edit.typed == "line_20 = 'twenty'\ndef total(values):\n    return sum(values)"
    assert (app.edit.before + app.edit.typed + app.edit.after) in _new_file()
    lib = by_repo["lib"]
    assert lib.edit.typed == "func B() int {\n\treturn 2\n}"
    assert lib.edit.before.endswith("}\n\n")
    for session in built:
        final = session.requests[-1]
        assert final.prefix == session.edit.before + session.edit.typed
        assert all(r.prefix.startswith(session.edit.before) for r in session.requests)
        assert [r.at for r in session.requests] == sorted(r.at for r in session.requests)
        assert {r.session for r in session.requests} == {session.number}
    assert [session.number for session in built] == list(range(len(built)))


def test_sessions_take_turns_among_repositories_and_are_reproducible(mined):
    records = sessions.mined_records(mined)
    records["app"] = records["app"] * 3  # three editable records in app, one in lib
    built = sessions.build_sessions(records, characters, limit=3, typing=TYPING, seed=1)
    assert [session.edit.repo for session in built] == ["app", "lib", "app"]
    again = sessions.build_sessions(records, characters, limit=3, typing=TYPING, seed=1)
    assert again == built
    capped = sessions.build_sessions(records, characters, limit=2, requests=2, typing=TYPING)
    assert [len(session.requests) for session in capped] == [2, 2]
    counts = {session.edit.repo: len(session.requests) for session in built}
    assert counts["lib"] < counts["app"]
    few = sessions.build_sessions(
        records, characters, limit=9, requests=counts["app"], typing=TYPING
    )
    assert [session.edit.repo for session in few] == ["app"] * 3  # lib's edit gives too few


def test_a_folder_that_is_not_a_mined_dataset_fails_in_one_line(tmp_path):
    with pytest.raises(ZenCoderError, match="not a mined dataset"):
        sessions.mined_records(tmp_path)
