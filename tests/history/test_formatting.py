import pytest
from hypothesis import given
from hypothesis import strategies as st

from zen_coder.history.formatting import _equal_after_deleting, is_formatting_only

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
