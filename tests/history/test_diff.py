"""Diffs are exactly git's (libgit2's xdiff on whole files), headers aside."""

from __future__ import annotations

import pygit2
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_coder.history.diff import unified_diff


def libgit2_diff(old: str | None, new: str | None, old_path: str, new_path: str):
    patch = pygit2.Patch.create_from(
        old, new, old_as_path=old_path, new_as_path=new_path, context_lines=3
    )
    text = patch.text
    header_end = text.find("\n--- ")
    _, added, deleted = patch.line_stats
    return (text[header_end + 1 :] if header_end >= 0 else ""), added, deleted


# Few distinct lines, so that texts repeat lines and the diff has choices to make.
LINES = st.lists(st.sampled_from(["a\n", "b\n", "c\n", "\n", "    x = 1\n", "}\n", "é\n"]))
TEXTS = st.builds("".join, LINES)
ENDINGS = st.sampled_from(["", "tail"])


@settings(max_examples=300)
@given(TEXTS, TEXTS, TEXTS, ENDINGS, ENDINGS)
def test_modifications_match_libgit2(shared: str, old: str, new: str, end_a: str, end_b: str):
    old_text = shared + old + shared + end_a
    new_text = shared + new + shared + end_b
    expected = libgit2_diff(old_text, new_text, "src/x.py", "src/y.py")
    assert unified_diff(old_text, new_text, "src/x.py", "src/y.py") == expected


@given(TEXTS, ENDINGS)
def test_adds_and_deletes_match_libgit2(text: str, ending: str):
    text += ending
    assert unified_diff(None, text, "n.py", "n.py") == libgit2_diff(None, text, "n.py", "n.py")
    assert unified_diff(text, None, "o.py", "o.py") == libgit2_diff(text, None, "o.py", "o.py")


def test_shapes_of_small_diffs():
    assert unified_diff(None, "a\n", "x", "x") == (
        "--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+a\n",
        1,
        0,
    )
    assert unified_diff("a\nb\n", None, "x", "x") == (
        "--- a/x\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n",
        0,
        2,
    )
    assert unified_diff("same\n", "same\n", "old", "new") == ("", 0, 0)
    assert unified_diff(None, "", "empty", "empty") == ("--- /dev/null\n+++ b/empty\n", 0, 0)
    lines = "".join(f"line {i}\n" for i in range(100))
    diff, added, deleted = unified_diff(lines, lines.replace("line 50\n", "line fifty\n"), "f", "f")
    assert diff == (
        "--- a/f\n+++ b/f\n@@ -48,7 +48,7 @@ line 46\n line 47\n line 48\n line 49\n-line 50\n"
        "+line fifty\n line 51\n line 52\n line 53\n"
    )
    assert (added, deleted) == (1, 1)
