"""Recognise file changes that only reformat code, so that mining can drop them.

A reformatting commit teaches a model nothing about a codebase's conventions except the formatter's,
and a big one can crowd out real edits. A change counts as formatting-only when:

1. the texts are equal once whitespace is removed (a cheap test that rejects almost every real
   edit, and gates the costly checks below);
2. the Pygments tokens of the file's language are equal, except for whitespace between tokens and
   inside comments, so that splitting or joining tokens (`int x` to `intx`) and editing string
   literals are real changes;
3. for Python, the ASTs and the comments are equal, which also accepts what black does beyond
   whitespace: quote style, parentheses, trailing commas, line wrapping, backslash continuations.

Where layout carries meaning (YAML, Makefile, Shell, Python that does not parse, languages
without a lexer), tokens cannot tell a harmless change from a structural one, so only trailing
whitespace, blank lines and line endings may change.
"""

from __future__ import annotations

import ast
import io
import re
import string
import tokenize
import warnings
from typing import TYPE_CHECKING

from pygments.token import Comment, Punctuation, String

if TYPE_CHECKING:
    from pygments.lexer import Lexer

# Layout is part of these languages' syntax or meaning, so they get the line rule, not tokens:
# a newline ends a shell or Dockerfile command, indentation nests YAML, Haskell and Markdown.
_LINE_SENSITIVE = frozenset({"YAML", "Haskell", "Makefile", "Markdown", "Shell", "Dockerfile"})

_WHITESPACE = b" \t\n\r\f\v"

# Characters that can differ between Python programs with equal ASTs and comments, as written by
# formatters: quote style and escaped quotes, string prefixes (dropped `u`, reordered `br`, merged
# implicit concatenations), redundant parentheses, trailing commas, backslash continuations,
# statements joined by semicolons, and digit-group underscores. Deleting more than strictly needed
# only lets more candidates through to the exact AST check.
_PYTHON_IGNORABLE = _WHITESPACE + b"'\"(),\\;_bBfFrRuU"

# Formatters change the case of string prefixes, numeric prefixes, hex digits and exponents.
_ASCII_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())

# A comment's words and punctuation marks, so that `#x` and `# x` or `/*x*/` and `/* x */` agree.
_COMMENT_PIECE = re.compile(r"\w+|\S")


def is_formatting_only(old: str, new: str, language: str | None) -> bool:
    """True when `new` differs from `old` only in formatting.

    Identical texts give False: they are no change at all, which the caller handles itself.
    """
    if old == new:
        return False
    if language == "Python":
        return _python_formatting_only(old, new)
    if not _equal_after_deleting(old, new, _WHITESPACE):
        return False
    lexer = None if language in _LINE_SENSITIVE else _lexer(language)
    if lexer is None:
        return _same_lines(old, new)
    return _same_tokens(old, new, lexer)


def _lexer(language: str | None) -> Lexer | None:
    """The Pygments lexer for `language`, or None when there is none.

    Imported here rather than at the top so that this module stays a leaf: it needs the language
    table only once a change has survived the whitespace test.
    """
    from zen_coder.history.languages import pygments_lexer

    return None if language is None else pygments_lexer(language)


def _equal_after_deleting(old: str, new: str, deleted: bytes, table: bytes | None = None) -> bool:
    """Whether the texts agree once every byte in `deleted` is removed and `table` is applied.

    This runs on every changed file, so a real edit must be rejected almost for free. Counting the
    deleted characters would take one `str.count` pass per character, slower than deleting them;
    instead the common prefix and suffix, which cannot tell the texts apart, are skipped at memcmp
    speed, and only the differing middles are encoded and squeezed. UTF-8 keeps ASCII bytes out of
    multi-byte sequences, so byte-wise deletion and case mapping act exactly like character-wise.
    """
    start = _common_prefix_length(old, new)
    end = _common_suffix_length(old, new, min(len(old), len(new)) - start)
    old_middle = old[start : len(old) - end].encode("utf-8", "surrogatepass").strip(deleted)
    new_middle = new[start : len(new) - end].encode("utf-8", "surrogatepass").strip(deleted)
    # The first and last kept bytes settle most real edits without squeezing the whole middles.
    old_ends = (old_middle[:1] + old_middle[-1:]).translate(table)
    if old_ends != (new_middle[:1] + new_middle[-1:]).translate(table):
        return False
    return old_middle.translate(table, deleted) == new_middle.translate(table, deleted)


def _common_prefix_length(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share, by binary search over C-level comparisons."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a.startswith(b[low:middle], low):
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix_length(a: str, b: str, limit: int) -> int:
    """How many trailing characters, at most `limit`, `a` and `b` share."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a.endswith(b[len(b) - middle : len(b) - low], 0, len(a) - low):
            low = middle
        else:
            high = middle - 1
    return low


def _same_lines(old: str, new: str) -> bool:
    """Whether the non-blank lines agree once trailing whitespace is removed.

    Leading whitespace and line breaks are kept because they can carry structure.
    """
    return _nonblank_lines(old) == _nonblank_lines(new)


def _nonblank_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _same_tokens(old: str, new: str, lexer: Lexer) -> bool:
    """Whether the texts lex to the same tokens, up to whitespace outside string literals."""
    try:
        return _significant_tokens(old, lexer) == _significant_tokens(new, lexer)
    except Exception:
        # A lexer bug on one odd file must not stop the mining; keeping the change is safe.
        return False


def _significant_tokens(text: str, lexer: Lexer) -> list[tuple[str, str]]:
    """The tokens that formatting cannot change, each tagged with its kind.

    String literals are kept exactly, since their whitespace is data. Comments become their words
    and punctuation marks, so re-spacing them is formatting, but joining or splitting words, or
    moving code into or out of a comment, is not. Some lexers lex a run of punctuation as one
    token (`]}`), which a space would split, so punctuation marks count one by one. Pygments
    sometimes folds neighbouring whitespace into other tokens, hence the strip.
    """
    tokens: list[tuple[str, str]] = []
    for token_type, value in lexer.get_tokens(text):
        if token_type in String:
            tokens.append(("string", value))
        elif token_type in Comment.Preproc:
            # Pygments may lex an indented directive as code, so compare both sides piece by piece.
            tokens.extend(("code", piece) for piece in _comment_pieces(value))
        elif token_type in Comment:
            tokens.extend(("comment", piece) for piece in _comment_pieces(value))
        elif token_type in Punctuation:
            tokens.extend(("code", mark) for mark in value if not mark.isspace())
        elif stripped := value.strip():
            tokens.append(("code", stripped))
    return tokens


def _comment_pieces(comment: str) -> list[str]:
    """A comment without its layout: re-wrapping and spacing after the marker are formatting."""
    return _COMMENT_PIECE.findall(comment)


def _python_formatting_only(old: str, new: str) -> bool:
    """Formatting-only for Python: equal ASTs and comments, or equal lines if either cannot parse.

    The canonical-text test rejects real edits cheaply before the parses, which cost milliseconds.
    It stands in for the whitespace test, which black's quotes and parentheses would fail.
    """
    if not _equal_after_deleting(old, new, _PYTHON_IGNORABLE, _ASCII_LOWER):
        return False
    old_tree, new_tree = _python_ast(old), _python_ast(new)
    if old_tree is None or new_tree is None:
        return _same_lines(old, new)
    if old_tree != new_tree:
        return False
    try:
        return _python_comments(old) == _python_comments(new)
    except (SyntaxError, tokenize.TokenError):
        return False


def _python_ast(source: str) -> str | None:
    """The AST of `source` without positions, as a comparable string; None if it does not parse.

    Warnings are silenced because old code is full of invalid escape sequences, which the parser
    reports as warnings.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant):
                # Only records a `u` prefix, which formatters drop: it means nothing in Python 3.
                node.kind = None
            elif isinstance(node, _DOCUMENTED) and _docstring(node) is not None:
                # Formatters re-indent and re-wrap docstrings; tools read them through
                # `inspect.cleandoc`, so only their words count.
                docstring = _docstring(node)
                docstring.value = " ".join(docstring.value.split())
        return ast.dump(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstring(node: ast.AST) -> ast.Constant | None:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[0].value if isinstance(body[0].value.value, str) else None
    return None


def _python_comments(source: str) -> list[list[str]]:
    """The comments of `source` in order, without their layout."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [_comment_pieces(token.string) for token in tokens if token.type == tokenize.COMMENT]
