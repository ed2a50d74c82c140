import ast
import io
import tokenize
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pygments.lexer import RegexLexer
from pygments.token import STANDARD_TYPES, Comment, Name, Punctuation, String, Text

from zen_coder.history import lexing
from zen_coder.history.formatting import (
    _categorize,
    _changed_statements_formatting_only,
    _comment_pieces,
    _equal_after_deleting,
    _parses,
    _python_comments,
    _same_lines,
    _significant_tokens,
    _token_verdict,
    is_formatting_only,
)
from zen_coder.history.languages import pygments_lexer

PYTHON_FORMATTING = {
    "black: quotes, spacing, parentheses, trailing comma, wrapping": (
        "def f(a,b):\n    return {'key':a,'other':(b)}\nx = f(1,\n      2,)\n",
        'def f(a, b):\n    return {"key": a, "other": b}\n\n\nx = f(\n    1,\n    2,\n)\n',
    ),
    "backslash continuation joined": ("total = 1 + \\\n    2\n", "total = 1 + 2\n"),
    "empty base list dropped": ("class A():\n  pass\n", "class A:\n    pass\n"),
    "numeric and prefix case": ("x = 0XFF + 1E5\ny = F'{x}'\n", "x = 0xFF + 1e5\ny = f'{x}'\n"),
    "escaped quote turned into the other quote": ("s = 'it\\'s'\n", 's = "it\'s"\n'),
    "string prefixes normalised": ("a = u'x'\nb = br'y'\n", 'a = "x"\nb = rb"y"\n'),
    "implicit concatenation joined": ('s = f"a " f"{x}"\n', 's = f"a {x}"\n'),
    "statements split at semicolons": ("a = 1; b = 2\n", "a = 1\nb = 2\n"),
    "space after the comment marker": ("x = 1 #x\n", "x = 1  # x\n"),
    "space after the comment marker of a rule": ("#----\nx = 1\n", "# ----\nx = 1\n"),
    "comment re-indented": ("if x:\n        # why\n        y()\n", "if x:\n    # why\n    y()\n"),
    "CRLF to LF": ("x = 1\r\ny = 2\r\n", "x = 1\ny = 2\n"),
    "docstring re-spaced": ('def f():\n    """Add  one."""\n', 'def f():\n    """Add one."""\n'),
    "docstring re-wrapped and re-indented": (
        'class A:\n  """Make a thing\n  that works."""\n',
        'class A:\n    """Make a thing that works."""\n',
    ),
    "syntax error, trailing spaces removed": ("def f(:\n    pass  \n", "def f(:\n    pass\n"),
}

PYTHON_REAL = {
    "statement moved out of a block": (
        "for x in y:\n    a()\n    b()\n",
        "for x in y:\n    a()\nb()\n",
    ),
    "comment reworded": ("x = 1  # add one\n", "x = 1  # add two\n"),
    "comment words joined": ("x = 1  # foo bar\n", "x = 1  # foobar\n"),
    "docstring reworded": ('def f():\n    """Add."""\n', 'def f():\n    """Sum."""\n'),
    "string literal whitespace": ("s = 'a b'\n", "s = 'ab'\n"),
    "f prefix added": ("s = '{x}'\n", "s = f'{x}'\n"),
    "underscore removed from a name": ("foo_bar = 1\n", "foobar = 1\n"),
    "name case changed": ("Value = 1\n", "value = 1\n"),
    "tokens joined into a syntax error": ("def f(x):\n    return x\n", "def f(x):\n    returnx\n"),
    "syntax error, re-indented": ("def f(:\n    pass\n", "def f(:\n  pass\n"),
    "escape replaced by a raw string": ("p = '\\\\d'\n", "p = r'\\\\d'\n"),
}


@pytest.mark.parametrize(("old", "new"), PYTHON_FORMATTING.values(), ids=PYTHON_FORMATTING)
def test_python_reformatting_is_formatting_only(old: str, new: str) -> None:
    assert is_formatting_only(old, new, "Python")


@pytest.mark.parametrize(("old", "new"), PYTHON_REAL.values(), ids=PYTHON_REAL)
def test_python_real_change_is_not_formatting_only(old: str, new: str) -> None:
    assert not is_formatting_only(old, new, "Python")


C_SOURCE = 'int main() {\n  printf("a b"); // greet\n  return 0;\n}\n'

# (language, old, new) triples.
TOKEN_FORMATTING = {
    "C brace placement, indentation, blank line": (
        "C",
        C_SOURCE,
        'int main()\n{\n    printf("a b"); // greet\n\n    return 0;\n}\n',
    ),
    "C CRLF to LF": ("C", C_SOURCE.replace("\n", "\r\n"), C_SOURCE),
    "C space after the comment marker": ("C", "int x; //greet\n", "int x; // greet\n"),
    "C block comment re-wrapped": ("C", "/* a\n   b */\nint x;\n", "/* a b */\nint x;\n"),
    "C directive indented": (
        "C",
        "struct s {\n#ifdef A\n  int x;\n#endif\n};\n",
        "struct s {\n  #ifdef A\n  int x;\n  #endif\n};\n",
    ),
    "C++ spacing": ("C++", "std::vector<int> v{1,2};\n", "std::vector<int> v{1, 2};\n"),
    "JavaScript re-indented": (
        "JavaScript",
        "function f(a){\n\treturn a+1\n}\n",
        "function f(a) {\n  return a + 1\n}\n",
    ),
    "TypeScript spacing": ("TypeScript", "let x:number=1;\n", "let x: number = 1;\n"),
    "Go spaces to tabs": (
        "Go",
        'func main() {\n    fmt.Println("a b")\n}\n',
        'func main() {\n\tfmt.Println("a b")\n}\n',
    ),
    "Java brace placement": (
        "Java",
        "class A {\n  void f()\n  {\n    g();\n  }\n}\n",
        "class A {\n    void f() {\n        g();\n    }\n}\n",
    ),
    "Rust spacing and wrapping": (
        "Rust",
        "fn main(){let x=1;}\n",
        "fn main() {\n    let x = 1;\n}\n",
    ),
    "JSON re-indented": ("JSON", '{"a": [1, 2]}\n', '{\n  "a": [\n    1,\n    2\n  ]\n}\n'),
}

TOKEN_REAL = {
    "C string literal whitespace": ("C", C_SOURCE, C_SOURCE.replace("a b", "ab")),
    "C tokens joined": ("C", "int x = 1;\n", "intx = 1;\n"),
    "C identifier renamed": ("C", "int x = 1;\n", "int y = 1;\n"),
    "C comment reworded": ("C", C_SOURCE, C_SOURCE.replace("greet", "hello")),
    "C comment words joined": ("C", "int x; // foo bar\n", "int x; // foobar\n"),
    "C code moved into a comment": ("C", "f(); // call\ng();\n", "f(); // call g();\n"),
    "JavaScript tokens joined": (
        "JavaScript",
        "function f(x) { return x }\n",
        "function f(x) { returnx }\n",
    ),
    "JavaScript template literal re-indented": (
        "JavaScript",
        "const s = `a\n  b`;\n",
        "const s = `a\n    b`;\n",
    ),
    "Go string literal whitespace": ("Go", 'x := "a  b"\n', 'x := "a b"\n'),
    "Java identifier renamed": ("Java", "int count = 0;\n", "int total = 0;\n"),
    "Rust comment reworded": ("Rust", "// add one\nlet x = 1;\n", "// add two\nlet x = 1;\n"),
}


@pytest.mark.parametrize(
    ("language", "old", "new"), TOKEN_FORMATTING.values(), ids=TOKEN_FORMATTING
)
def test_token_languages_accept_whitespace_changes(language: str, old: str, new: str) -> None:
    assert is_formatting_only(old, new, language)


@pytest.mark.parametrize(("language", "old", "new"), TOKEN_REAL.values(), ids=TOKEN_REAL)
def test_token_languages_reject_real_changes(language: str, old: str, new: str) -> None:
    assert not is_formatting_only(old, new, language)


LINE_FORMATTING = {
    "YAML trailing spaces": ("YAML", "a:\n  b: 1  \n", "a:\n  b: 1\n"),
    "YAML CRLF and final newline": ("YAML", "a: 1\r\nb: 2\r\n", "a: 1\nb: 2"),
    "Markdown blank lines": ("Markdown", "# Title\n\n\n\nText.\n", "# Title\n\nText.\n"),
    "Haskell trailing spaces": ("Haskell", "main = do\n  print 1 \n", "main = do\n  print 1\n"),
    "no language, blank line": (None, "a\nb\n", "a\n\nb\n"),
    "language without a lexer": ("Klingon", "a  \nb\n", "a\nb\n"),
    "Shell trailing spaces": ("Shell", "echo hi  \n", "echo hi\n"),
}

LINE_REAL = {
    "YAML mapping re-indented": ("YAML", "a:\n  b: 1\n  c: 2\n", "a:\n  b: 1\nc: 2\n"),
    "Markdown paragraph re-flowed": ("Markdown", "one two\nthree\n", "one\ntwo three\n"),
    "Haskell block re-indented": (
        "Haskell",
        "f x = y\n  where y = x\n",
        "f x = y\nwhere y = x\n",
    ),
    "Makefile recipe tab to spaces": ("Makefile", "all:\n\tcc a.c\n", "all:\n    cc a.c\n"),
    "no language, re-indented": (None, "a\n  b\n", "a\n    b\n"),
    "no language, lines joined": (None, "a\nb\n", "a b\n"),
    "Shell commands joined": ("Shell", "cd build\nmake\n", "cd build make\n"),
    "Dockerfile instructions joined": ("Dockerfile", "FROM a\nRUN b\n", "FROM a RUN b\n"),
}


@pytest.mark.parametrize(("language", "old", "new"), LINE_FORMATTING.values(), ids=LINE_FORMATTING)
def test_line_rule_accepts_trailing_whitespace_and_blank_lines(
    language: str | None, old: str, new: str
) -> None:
    assert is_formatting_only(old, new, language)


@pytest.mark.parametrize(("language", "old", "new"), LINE_REAL.values(), ids=LINE_REAL)
def test_line_rule_rejects_layout_changes(language: str | None, old: str, new: str) -> None:
    assert not is_formatting_only(old, new, language)


@pytest.mark.parametrize("language", ["Python", "C", "YAML", None])
def test_identical_texts_are_no_change(language: str | None) -> None:
    assert not is_formatting_only("x = 1\n", "x = 1\n", language)


_DELETED = " \t\n_'"
_UPPER, _LOWER = "AB", "ab"
_TEXT = st.text(alphabet=st.sampled_from(list(_DELETED + _UPPER + _LOWER + "\u00e9\u0130\udc80")))


def _canonical(text: str) -> str:
    return text.translate(str.maketrans(_UPPER, _LOWER, _DELETED))


@given(_TEXT, _TEXT, _TEXT)
def test_skipping_common_ends_keeps_the_plain_definition(prefix: str, old: str, new: str) -> None:
    # Shared prefixes and suffixes are skipped and only the ends of the rest are checked first;
    # the answer must still be that of deleting and mapping the characters everywhere.
    table = bytes.maketrans(_UPPER.encode(), _LOWER.encode())
    for a, b in [(old, new), (prefix + old, prefix + new), (old + prefix, new + prefix)]:
        expected = _canonical(a) == _canonical(b)
        assert _equal_after_deleting(a, b, _DELETED.encode(), table) == expected


# -- the fast paths against the definitions they stand in for ----------------------------------
#
# `is_formatting_only` compares only the top-level statements around a change, and lexes both
# texts side by side until they differ. These tests pin it to the plain definition, kept here as
# the oracle: the whole files' ASTs (docstring whitespace and `u` prefixes ignored) and comments,
# the line rule when either does not parse, and whole token lists.


def _reference_python_ast(source: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant):
                node.kind = None
            elif isinstance(node, _DOCUMENTED):
                body = node.body
                first = body[0].value if body and isinstance(body[0], ast.Expr) else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    first.value = " ".join(first.value.split())
        return ast.dump(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _reference_comments(source: str) -> list[list[str]]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [_comment_pieces(token.string) for token in tokens if token.type == tokenize.COMMENT]


def _reference_python(old: str, new: str) -> bool:
    if old == new:
        return False
    old_tree, new_tree = _reference_python_ast(old), _reference_python_ast(new)
    if old_tree is None or new_tree is None:
        return _same_lines(old, new)
    if old_tree != new_tree:
        return False
    try:
        return _reference_comments(old) == _reference_comments(new)
    except (SyntaxError, tokenize.TokenError):
        return False


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SOURCES = sorted((Path(__file__).parents[2] / "src" / "zen_coder").rglob("*.py"))

# A module with what the cuts must get right: a docstring whose lines look like statements,
# decorators, clauses at the top level, continuations, a string statement that is no docstring,
# comments, `#` in strings, tabs.
_TRICKY = '''"""Module docstring.
Looks like code = 1
  indented
"""
import os  # a comment
@decorator
# a comment between
@other(
    arg)
def f(a, b = 1):
    """Doc  string."""
    return a+b  # sum
if os.sep:
    x = '#not a comment'
else:
    x = "y"
try:
\tpass
except OSError:
    pass
finally:
    pass
"a string, not a docstring"
total = 1 + \\
    2
class A( object ):
    u"""Doc."""
    def g(self): return [1,2,]
'''

_PYTHON2 = "def f():\n    print 'hi'\n\nx = g(1,2)\ny = {'a':1}\n"


def _edit(text: str, kind: str, line: int) -> str:
    """One edit of line `line` (modulo the line count): some only reformat, some change code."""
    lines = text.split("\n")
    i = line % len(lines)
    target = lines[i]
    if kind == "trailing space":
        lines[i] = target + "  "
    elif kind == "indent":
        lines[i] = "  " + target
    elif kind == "dedent":
        lines[i] = target[2:] if target.startswith("  ") else target
    elif kind == "blank line":
        lines.insert(i, "")
    elif kind == "quotes":
        lines[i] = target.translate(str.maketrans("'\"", "\"'"))
    elif kind == "spaces around operators":
        lines[i] = target.replace("=", " = ").replace(",", ", ")
    elif kind == "spaces removed":
        lines[i] = target.replace(" ", "", 2)
    elif kind == "join with next line" and i + 1 < len(lines):
        lines[i : i + 2] = [target + " " + lines[i + 1].lstrip()]
    elif kind == "split at a space" and " " in target.strip():
        cut = target.rindex(" ")
        lines[i : i + 1] = [target[:cut], target[cut + 1 :]]
    elif kind == "continuation" and " " in target.strip():
        cut = target.rindex(" ")
        lines[i] = target[:cut] + " \\\n    " + target[cut + 1 :]
    elif kind == "parentheses" and "= " in target:
        name, _, value = target.partition("= ")
        lines[i] = f"{name}= ({value})"
    elif kind == "comment spacing":
        lines[i] = target.replace("# ", "#") if "# " in target else target.replace("#", "# ")
    elif kind == "word changed":
        lines[i] = target.replace("e", "a", 1)
    return "\n".join(lines)


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "trailing space",
                "indent",
                "dedent",
                "blank line",
                "quotes",
                "spaces around operators",
                "spaces removed",
                "join with next line",
                "split at a space",
                "continuation",
                "parentheses",
                "comment spacing",
                "word changed",
            ]
        ),
        st.integers(min_value=0, max_value=10_000),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_SOURCES) + 1), _EDITS)
def test_python_verdict_agrees_with_whole_file_comparison(source: int, edits) -> None:
    # Checked by hand: with string constants compared as equal, this finds a disagreement; the
    # cases below pin what random edits rarely hit.
    if source < len(_SOURCES):
        old = _SOURCES[source].read_text()
    else:
        old = _TRICKY if source == len(_SOURCES) else _PYTHON2
    new = old
    for kind, line in edits:
        new = _edit(new, kind, line)
    assert is_formatting_only(old, new, "Python") == _reference_python(old, new)


CUT_CASES = {
    "string statement after code re-spaced": ('x = 1\n"a  b"\n', 'x = 1\n"a b"\n', False),
    "module docstring re-spaced": ('"a  b"\nx = 1\n', '"a b"\nx = 1\n', True),
    "module docstring after comments re-spaced": ('# c\n\n"a  b"\n', '# c\n\n"a b"\n', True),
    "docstring line that looks like code": (
        '"""Doc.\nvalue = 1\n"""\nx = 1\n',
        '"""Doc.\nvalue  = 1\n"""\nx = 1\n',
        True,
    ),
    "string line that looks like code": (
        's = """\nvalue = 1\n"""\nx = 1\n',
        's = """\nvalue  = 1\n"""\nx = 1\n',
        False,
    ),
    "definition after its decorator": (
        "@d\ndef f(a,b):\n    pass\n",
        "@d\ndef f(a, b):\n    pass\n",
        True,
    ),
    "top-level else clause": (
        "if x:\n    a()\nelse:\n    b( )\n",
        "if x:\n    a()\nelse:\n    b()\n",
        True,
    ),
    "hash in a string becomes a comment": ("x = '#'  # c\n", "x = ''  #'  # c\n", False),
    "Python 2 file, trailing spaces": (_PYTHON2.replace("2)", "2)  "), _PYTHON2, True),
    "Python 2 file, re-indented": (_PYTHON2, _PYTHON2.replace("    print", "  print"), False),
    "Python 2 file, black after the error": (_PYTHON2, _PYTHON2.replace("1,2", "1, 2"), False),
}


@pytest.mark.parametrize(("old", "new", "expected"), CUT_CASES.values(), ids=CUT_CASES)
def test_cuts_around_the_change_keep_the_verdict(old: str, new: str, expected: bool) -> None:
    # Checked by hand: without the parse of the text before the cut, the Python 2 cases fail; with
    # every middle's first statement taken for a docstring, the string statement case fails.
    assert _reference_python(old, new) == expected
    assert is_formatting_only(old, new, "Python") == expected


def test_an_edit_in_a_long_file_is_decided_from_its_statements() -> None:
    # The fast path must decide the common case itself, not hand it to the whole-file comparison.
    old = _SOURCES[0].read_text() + "\n\ndef added(a,b):\n    return a+b\n\n\nx = 1\n"
    new = old.replace("def added(a,b):\n    return a+b", "def added(a, b):\n    return a + b")
    assert _changed_statements_formatting_only(old, new) is True
    assert _changed_statements_formatting_only(old, new.replace("a + b", "b + a")) is False


_TOKEN_SOURCES = {
    "C": C_SOURCE * 3,
    "Go": 'package main\n\nfunc main() {\n\tfmt.Println("a b") // greet\n\tx := `raw\n  s`\n}\n',
    "JavaScript": "function f(a) {\n  return `t ${a}` + 'x' // c\n}\n/* block\n comment */\n",
    "Rust": 'fn main() {\n    let s = "a  b"; // c\n    println!("{}", s);\n}\n',
}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_TOKEN_SOURCES)), _EDITS)
def test_token_verdict_agrees_with_whole_token_lists(language: str, edits) -> None:
    assert_verdict_of_whole_token_lists(_TOKEN_SOURCES[language], edits, language)


def assert_verdict_of_whole_token_lists(old: str, edits, language: str) -> None:
    """The check's verdict on `old` edited, against the plain definition: equal but for
    whitespace, and the same significant tokens over the whole files."""
    new = old
    for kind, line in edits:
        new = _edit(new, kind, line)
    lexer = pygments_lexer(language)
    expected = (
        old != new
        and _equal_after_deleting(old, new, b" \t\n\r\f\v")
        and list(_significant_tokens(old, lexer)) == list(_significant_tokens(new, lexer))
    )
    assert is_formatting_only(old, new, language) == expected


def test_token_categories_match_the_token_hierarchy() -> None:
    for token_type in STANDARD_TYPES:
        expected = (
            "string"
            if token_type in String
            else "directive"
            if token_type in Comment.Preproc
            else "comment"
            if token_type in Comment
            else "punctuation"
            if token_type in Punctuation
            else "code"
        )
        assert _categorize(token_type) == expected


# -- lexing token languages side by side, with the lexers' state in view ------------------------

_LONG_SOURCES = {
    "Go": (
        'package main\n\nimport "fmt"\n\n'
        + "".join(
            f"// f{i} prints.\nfunc f{i}(a int) int {{\n\tx := `raw {i}\n  s`\n"
            f'\tfmt.Println("a b", a) /* c */\n\treturn a + {i}\n}}\n\n'
            for i in range(40)
        )
    ),
    "Rust": "".join(
        f'/// Doc {i}.\nfn f{i}(a: u32) -> u32 {{\n    let s = "a  b"; // c\n'
        f'    let r = r#"raw {i}"#;\n    a + {i}\n}}\n\n'
        for i in range(40)
    ),
    "TypeScript": "".join(
        f"// f{i}\nexport function f{i}(a: number): string {{\n"
        f"  return `t ${{a}} {i}` + 'x' /* c */;\n}}\n\n"
        for i in range(40)
    ),
    "Java": "".join(
        f"class A{i} {{\n  /** Doc. */\n  int f(int a) {{ return a + {i}; }} // c\n}}\n"
        for i in range(40)
    ),
}
_STEPPABLE = sorted({"Go", "Rust", "TypeScript", "JavaScript", "Java", "Kotlin", "Scala", "TOML"})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_STEPPABLE), st.sampled_from(sorted(_LONG_SOURCES)), _EDITS)
def test_stepping_a_lexer_gives_its_tokens(language: str, source: str, edits) -> None:
    # `steps` stands in for RegexLexer.get_tokens_unprocessed; any text must lex the same.
    text = _LONG_SOURCES[source]
    for kind, line in edits:
        text = _edit(text, kind, line)
    lexer = pygments_lexer(language)
    assert lexing.steppable(lexer)
    text = lexing.preprocess(lexer, text)
    stepped = [token for _, tokens in lexing.steps(lexer, text, ["root"]) for token in tokens]
    assert stepped == [(kind, value) for _, kind, value in lexer.get_tokens_unprocessed(text)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_LONG_SOURCES)), _EDITS)
def test_token_verdict_of_long_files_agrees_with_whole_token_lists(language: str, edits) -> None:
    # Long files, so that the lexers agree again well before the end (the cases below pin the
    # conditions of agreeing, which random edits rarely test).
    assert_verdict_of_whole_token_lists(_LONG_SOURCES[language], edits, language)


def test_an_edit_early_in_a_long_file_is_decided_near_it() -> None:
    # The side-by-side lexing must stop once both lexers agree again, not lex both files whole.
    old = _LONG_SOURCES["Go"]
    new = old.replace("func f1(a int)", "func  f1(a int)", 1)
    lexer = pygments_lexer("Go")
    verdict, lexed = _token_verdict(old, new, lexer, lexer)
    assert verdict is True
    assert lexed < (len(old) + len(new)) / 10


class _LookbehindLexer(RegexLexer):
    """`y` right after `bc` is a string, otherwise a name: a rule that reads two characters back."""

    tokens = {  # noqa: RUF012 - Pygments' own convention for a lexer's rules
        "root": [
            (r"(?<=bc)y", String),
            (r"[a-z]", Name),
            (r"\s+", Text),
        ]
    }


def test_lexers_agree_only_past_what_their_rules_read_back() -> None:
    # After "b c" and "bc" both lexers are in the root state with "y\n" left, but `y` lexes
    # differently because its rule looks two characters back, into the part that differs.
    # Checked by hand: with `context_before` fixed at 1, this says True.
    lexer = _LookbehindLexer()
    assert lexing.context_before(lexer) == 2
    old, new = "b cy\n", "bcy\n"
    assert list(_significant_tokens(old, lexer)) != list(_significant_tokens(new, lexer))
    assert _token_verdict(old, new, lexer, lexer)[0] is False


class _StateLexer(RegexLexer):
    """`<` right before a letter opens a state in which `y` is a string; elsewhere `y` is a name."""

    tokens = {  # noqa: RUF012 - Pygments' own convention for a lexer's rules
        "root": [
            (r"<(?=[a-z])", Punctuation, "angle"),
            (r"<", Punctuation),
            (r"[a-z]", Name),
            (r"\s+", Text),
        ],
        "angle": [
            (r"y", String),
            (r"[a-z]", Name),
            (r"\s+", Text, "#pop"),
        ],
    }


def test_lexers_agree_only_in_the_same_state() -> None:
    # After "< a" and "<a" both lexers have "y\n" left and the same tokens so far, but only one
    # is in the state where `y` is a string. Checked by hand: without comparing the states, this
    # says True.
    lexer = _StateLexer()
    old, new = "< ay\n", "<ay\n"
    assert list(_significant_tokens(old, lexer)) != list(_significant_tokens(new, lexer))
    assert _token_verdict(old, new, lexer, lexer)[0] is False


_COMMENT_PIECES = st.lists(
    st.sampled_from(
        [
            "x = 1",
            "  # c",
            "#",
            "'#'",
            '"#"',
            "'''a\n#b'''",
            '"""#\n"""',
            "'\\''",
            '"\\"#"',
            "r'\\'#'",
            "f'{x}#'",
            "f\"{'#'}\"",
            "b'#'",
            "(1,  # c\n 2)",
            "s = 'a' \\\n  'b'",
            "'''a\\''''",
            "'''it's # not'''",
            '"""say "hi" # not"""',
            '"""a""" # c',
            "\n",
            " ",
            "\t# t",
        ]
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(_COMMENT_PIECES)
def test_comments_are_found_as_the_tokenizer_finds_them(pieces) -> None:
    # The scan for strings and comments stands in for the tokenizer on modules that parse.
    # Checked by hand: with triple-quoted strings ending at the first quote, this finds a module
    # where the two differ.
    source = "\n".join(pieces) + "\n"
    if _reference_python_ast(source) is None:
        return
    assert _python_comments(source) == _reference_comments(source)


def test_comments_of_the_project_sources_are_found_as_the_tokenizer_finds_them() -> None:
    for path in _SOURCES:
        source = path.read_text()
        assert _python_comments(source) == _reference_comments(source), path


SYMBOL_TABLE_ERRORS = {
    "nonlocal at the top level": "nonlocal x\n",
    "a repeated parameter": "def f(a, a):\n    pass\n",
    "global after assignment": "def f():\n    x = 1\n    global x\n",
}


@pytest.mark.parametrize("source", SYMBOL_TABLE_ERRORS.values(), ids=SYMBOL_TABLE_ERRORS)
def test_code_the_symbol_table_rejects_still_parses(source: str) -> None:
    # Checked by hand: answering False where the symbol table fails makes these fail.
    assert _reference_python_ast(source) is not None
    assert _parses(source)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(_SOURCES) + 1), _EDITS)
def test_parsing_without_the_tree_agrees_with_parsing(source: int, edits) -> None:
    text = _SOURCES[source].read_text() if source < len(_SOURCES) else _TRICKY + _PYTHON2
    for kind, line in edits:
        text = _edit(text, kind, line)
    assert _parses(text) == (_reference_python_ast(text) is not None)
