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

The checks after the first one cost milliseconds per file, and most changes that reach them touch a
few lines of a long file. For Python only the top-level statements around the change are compared:
when the shared beginning and end of the two texts each parse on their own, the whole files' ASTs
and comments are theirs followed by the changed statements', so comparing the changed statements
decides the same (otherwise the whole files are compared). Token streams are compared as they are
lexed, stopping at the first difference, or, for most lexers (`lexing.steppable`), as soon as both
lexers are in the same state at the same place in the texts' shared end: the rest is the same.

Where layout carries meaning (YAML, Makefile, Shell, Python that does not parse, languages
without a lexer), tokens cannot tell a harmless change from a structural one, so only trailing
whitespace, blank lines and line endings may change.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import string
import symtable
import sys
import tokenize
import warnings
from collections import deque
from collections.abc import Iterator
from itertools import zip_longest
from typing import TYPE_CHECKING

from pygments.token import Comment, Punctuation, String

from zen_coder.history import lexing
from zen_coder.history.edits import differing_lines, shared_ends

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
    lexers = None if language in _LINE_SENSITIVE else _lexers(language)
    if lexers is None:
        return _same_lines(old, new)
    return _same_tokens(old, new, lexers)


@functools.cache
def _lexers(language: str | None) -> tuple[Lexer, Lexer] | None:
    """Two Pygments lexers for `language`, one per text, or None when there is none.

    The texts are lexed side by side, and a lexer may keep state on itself while it lexes. The
    language table is imported here rather than at the top so that this module stays a leaf: it
    needs the table only once a change has survived the whitespace test.
    """
    from zen_coder.history.languages import pygments_lexer

    lexer = None if language is None else pygments_lexer(language)
    return None if lexer is None else (lexer, type(lexer)(**lexer.options))


def _equal_after_deleting(old: str, new: str, deleted: bytes, table: bytes | None = None) -> bool:
    """Whether the texts agree once every byte in `deleted` is removed and `table` is applied.

    This runs on every changed file, so a real edit must be rejected almost for free. Counting the
    deleted characters would take one `str.count` pass per character, slower than deleting them;
    instead the common prefix and suffix, which cannot tell the texts apart, are skipped at memcmp
    speed, and only the differing middles are encoded and squeezed. UTF-8 keeps ASCII bytes out of
    multi-byte sequences, so byte-wise deletion and case mapping act exactly like character-wise.
    """
    start, end = shared_ends(old, new)
    old_middle = old[start : len(old) - end].encode("utf-8", "surrogatepass").strip(deleted)
    new_middle = new[start : len(new) - end].encode("utf-8", "surrogatepass").strip(deleted)
    # The first and last kept bytes settle most real edits without squeezing the whole middles.
    old_ends = (old_middle[:1] + old_middle[-1:]).translate(table)
    if old_ends != (new_middle[:1] + new_middle[-1:]).translate(table):
        return False
    return old_middle.translate(table, deleted) == new_middle.translate(table, deleted)


def _same_lines(old: str, new: str) -> bool:
    """Whether the non-blank lines agree once trailing whitespace is removed.

    Leading whitespace and line breaks are kept because they can carry structure.
    """
    return _nonblank_lines(old) == _nonblank_lines(new)


def _nonblank_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _same_tokens(old: str, new: str, lexers: tuple[Lexer, Lexer]) -> bool:
    """Whether the texts lex to the same tokens, up to whitespace outside string literals.

    Both are lexed side by side and the first difference ends the work: lexing is most of the
    cost, and a real change usually differs long before the end of the file. Where the lexer's
    state is in view (`lexing.steppable`), equal states at the same place in the shared end of the
    texts end it too, since the rest of the tokens are then the same.
    """
    old_lexer, new_lexer = lexers
    try:
        if lexing.steppable(old_lexer):
            return _token_verdict(old, new, old_lexer, new_lexer)[0]
        pairs = zip_longest(
            _significant_tokens(old, old_lexer), _significant_tokens(new, new_lexer)
        )
        return all(old_token == new_token for old_token, new_token in pairs)
    except Exception:
        # A lexer bug on one odd file must not stop the mining; keeping the change is safe.
        return False


def _token_verdict(old: str, new: str, old_lexer: Lexer, new_lexer: Lexer) -> tuple[bool, int]:
    """`_same_tokens` for steppable lexers, and how many characters of the two texts it lexed.

    Each side is stepped while it has more text left than the other, so both stay at about the
    same place. The texts share an end of `same_end` characters; once both have the same number
    `left` of characters still to lex, within that end and far enough into it that no rule can read
    back into where they differ, and their states are equal, they lex the same from there.
    """
    a, b = lexing.preprocess(old_lexer, old), lexing.preprocess(new_lexer, new)
    same_end = shared_ends(a, b)[1]
    settled = same_end - lexing.context_before(old_lexer)  # most text left where states decide
    stack_a, stack_b = ["root"], ["root"]
    steps_a = lexing.steps(old_lexer, a, stack_a)
    steps_b = lexing.steps(new_lexer, b, stack_b)
    pending_a: deque[tuple[str, str]] = deque()
    pending_b: deque[tuple[str, str]] = deque()
    left_a, left_b = len(a), len(b)
    done_a = done_b = False
    while not (done_a and done_b):
        if left_a == left_b <= settled and stack_a == stack_b:
            break
        if not done_a and (done_b or left_a >= left_b):
            step = next(steps_a, None)
            if step is None:
                done_a = True
                continue
            left_a = len(a) - step[0]
            pending_a.extend(_significant_pieces(step[1]))
        else:
            step = next(steps_b, None)
            if step is None:
                done_b = True
                continue
            left_b = len(b) - step[0]
            pending_b.extend(_significant_pieces(step[1]))
        while pending_a and pending_b:
            if pending_a.popleft() != pending_b.popleft():
                return False, len(a) - left_a + len(b) - left_b
    return not pending_a and not pending_b, len(a) - left_a + len(b) - left_b


def _significant_tokens(text: str, lexer: Lexer) -> Iterator[tuple[str, str]]:
    """The tokens that formatting cannot change, each tagged with its kind, in order."""
    return _significant_pieces(lexer.get_tokens(text))


def _significant_pieces(tokens) -> Iterator[tuple[str, str]]:
    """The parts of (token type, value) pairs that formatting cannot change, tagged with their kind.

    String literals are kept exactly, since their whitespace is data. Comments become their words
    and punctuation marks, so re-spacing them is formatting, but joining or splitting words, or
    moving code into or out of a comment, is not. Some lexers lex a run of punctuation as one
    token (`]}`), which a space would split, so punctuation marks count one by one. Pygments
    sometimes folds neighbouring whitespace into other tokens, hence the strip.
    """
    for token_type, value in tokens:
        category = _CATEGORIES.get(token_type) or _categorize(token_type)
        if category == "string":
            yield "string", value
        elif category == "directive":
            # Pygments may lex an indented directive as code, so compare both sides piece by piece.
            yield from (("code", piece) for piece in _comment_pieces(value))
        elif category == "comment":
            yield from (("comment", piece) for piece in _comment_pieces(value))
        elif category == "punctuation":
            yield from (("code", mark) for mark in value if not mark.isspace())
        elif stripped := value.strip():
            yield "code", stripped


# Each token type's category, looked up once: `type in String` walks the type's ancestry.
_CATEGORIES: dict[tuple[str, ...], str] = {}  # Pygments token types are tuples


def _categorize(token_type: tuple[str, ...]) -> str:
    if token_type in String:
        category = "string"
    elif token_type in Comment.Preproc:
        category = "directive"
    elif token_type in Comment:
        category = "comment"
    elif token_type in Punctuation:
        category = "punctuation"
    else:
        category = "code"
    _CATEGORIES[token_type] = category
    return category


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
    verdict = _changed_statements_formatting_only(old, new)
    return _whole_files_formatting_only(old, new) if verdict is None else verdict


def _whole_files_formatting_only(old: str, new: str) -> bool:
    old_tree, new_tree = _python_ast(old), _python_ast(new)
    if old_tree is None or new_tree is None:
        return _same_lines(old, new)
    if not _same_ast(old_tree, new_tree, module_docstring=True):
        return False
    try:
        return _python_comments(old) == _python_comments(new)
    except (SyntaxError, tokenize.TokenError):
        return False


def _changed_statements_formatting_only(old: str, new: str) -> bool | None:
    """The verdict from the top-level statements around the change alone; None when the changed
    statements do not parse on their own, and only the whole files can tell.

    The texts are cut into a shared beginning, the middles and a shared end. If the beginning and
    the end each parse on their own (so each ends outside any string, bracket or continuation, at
    the top level), a module is their statements around its middle's, and tokenizing it gives
    their tokens around its middle's: the whole files' ASTs and comments are equal exactly when
    the middles' are.
    """
    first_line, last_line_end, _ = differing_lines(old, new)
    start, prefix_tree = _prefix_cut(old, first_line)
    end = _suffix_cut(old, last_line_end)
    old_middle, new_middle = old[start:end], new[start : len(new) - (len(old) - end)]
    old_tree, new_tree = _python_ast(old_middle), _python_ast(new_middle)
    if old_tree is None or new_tree is None:
        return None
    # The first statement of the middle is the module's docstring only if nothing precedes it.
    if not _same_ast(old_tree, new_tree, module_docstring=not prefix_tree.body):
        return False
    if "#" not in old_middle and "#" not in new_middle:
        return True  # neither has a comment
    try:
        return _python_comments(old_middle) == _python_comments(new_middle)
    except (SyntaxError, tokenize.TokenError):
        return None


# A line that can start a top-level statement: not indented, not a comment or a closing bracket,
# not the `else` of a compound statement. Which ones really do is left to the parser.
_TOP_LEVEL_LINE = re.compile(r"(?![\s#)\]}]|(?:else|elif|except|finally)\b)")
_BLANK_OR_COMMENT_LINE = re.compile(r"[ \t\f\r]*(?:#.*)?")
# Cuts tried on each side before settling for the start or the end of the text, which always parse
# (a line that looks like a statement may be inside a multi-line string).
_CUT_ATTEMPTS = 3


def _prefix_cut(text: str, line_start: int) -> tuple[int, ast.Module]:
    """The last top-level line start at or before `line_start` whose beginning parses, and the
    beginning's AST."""
    for _ in range(_CUT_ATTEMPTS):
        while line_start > 0 and not _is_statement_start(text, line_start):
            line_start = text.rfind("\n", 0, line_start - 1) + 1
        tree = _python_ast(text[:line_start])
        if tree is not None:
            return line_start, tree
        line_start = text.rfind("\n", 0, line_start - 1) + 1
    return 0, ast.Module(body=[], type_ignores=[])


def _suffix_cut(text: str, line_start: int) -> int:
    """The first top-level line start at or after `line_start` whose end parses."""
    for _ in range(_CUT_ATTEMPTS):
        while line_start < len(text) and not _is_statement_start(text, line_start):
            line_start = text.find("\n", line_start) + 1 or len(text)
        if line_start == len(text) or _parses(text[line_start:]):
            return line_start
        line_start = text.find("\n", line_start) + 1 or len(text)
    return len(text)


def _is_statement_start(text: str, line_start: int) -> bool:
    """Whether the line at `line_start` may start a top-level statement: it is not indented, a
    comment, a closing bracket, a clause such as `else`, or a definition after its decorator."""
    return _TOP_LEVEL_LINE.match(text, line_start) is not None and not _after_decorator(
        text, line_start
    )


def _after_decorator(text: str, line_start: int) -> bool:
    """Whether the last line before `line_start` that holds code is a decorator."""
    end = line_start - 1
    while end > 0:
        previous = text.rfind("\n", 0, end) + 1
        if not _BLANK_OR_COMMENT_LINE.fullmatch(text, previous, end):
            return text.startswith("@", previous)
        end = previous - 1
    return False


def _python_ast(source: str) -> ast.Module | None:
    """The AST of `source`; None if it does not parse.

    Warnings are silenced because old code is full of invalid escape sequences, which the parser
    reports as warnings.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _parses(source: str) -> bool:
    """Whether `source` parses, when its AST is not needed.

    Building the symbol table parses the source without turning its syntax tree into Python
    objects, a third faster than `ast.parse`. It also rejects some code that parses (`nonlocal` at
    the top level, a repeated parameter name), which `ast.parse` then decides.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            symtable.symtable(source, "<source>", "exec")
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _python_ast(source) is not None


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Leaves compared with `==`; anything else (floats: -0.0 and 0.0, NaN) by its repr, as ast.dump.
_PLAIN_VALUES = (str, int, bytes, bool, type(None), type(Ellipsis))


def _same_ast(old: ast.AST, new: ast.AST, *, module_docstring: bool) -> bool:
    """Whether two trees are equal without positions, as their `ast.dump`s would be, except that
    formatters' freedoms are ignored: the `u` prefix of a string (it means nothing in Python 3)
    and the layout of docstrings (tools read them through `inspect.cleandoc`, so only their words
    count). Stops at the first difference, and never recurses, so depth costs no stack.
    """
    pending: list[tuple[object, object]] = [(old, new)]
    while pending:
        a, b = pending.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, ast.AST):
            if isinstance(a, _DOCUMENTED) and (module_docstring or not isinstance(a, ast.Module)):
                _normalize_docstring(a)
                _normalize_docstring(b)
            for name in a._fields:
                if name != "kind":  # Constant.kind only records a `u` prefix
                    pending.append((getattr(a, name, None), getattr(b, name, None)))
        elif isinstance(a, list):
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif a != b if type(a) in _PLAIN_VALUES else repr(a) != repr(b):
            return False
    return True


def _normalize_docstring(node: ast.AST) -> None:
    docstring = _docstring(node)
    if docstring is not None:
        docstring.value = " ".join(docstring.value.split())


def _docstring(node: ast.AST) -> ast.Constant | None:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[0].value if isinstance(body[0].value.value, str) else None
    return None


def _python_comments(source: str) -> list[list[str]]:
    """The comments of `source`, a module that parses, in order, without their layout."""
    if _STRING_OR_COMMENT is None:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        comments = (token.string for token in tokens if token.type == tokenize.COMMENT)
    else:
        comments = (
            match.group() for match in _STRING_OR_COMMENT.finditer(source) if match.lastgroup
        )
    return [_comment_pieces(comment) for comment in comments]


# Before Python 3.12 a string literal is one token that ends at the first unescaped quote like the
# one that opened it, whatever its prefix (an f-string cannot hold that quote), and a `#` outside
# string literals starts a comment that runs to the end of the line. So in a module that parses,
# scanning for strings and comments from its start finds exactly the comments the tokenizer does,
# at a fraction of the pure-Python tokenizer's cost. Python 3.12 tokenizes f-strings into parts,
# which may hold quotes and comments of their own, and has a tokenizer written in C: it is used.
_STRING_OR_COMMENT = (
    re.compile(
        "|".join(
            (
                r"(?P<comment>#[^\r\n]*)",
                r"'''(?:[^'\\]|\\.|'(?!''))*'''",
                r'"""(?:[^"\\]|\\.|"(?!""))*"""',
                r"'(?:[^'\\\n]|\\.)*'",
                r'"(?:[^"\\\n]|\\.)*"',
            )
        ),
        re.DOTALL,
    )
    if sys.version_info < (3, 12)
    else None
)
