import pytest

from zen_coder.history.languages import (
    LANGUAGES,
    detect_language,
    needs_first_line,
    pygments_lexer,
)

# At least one path per language, so every entry of LANGUAGES is reachable.
PATHS = [
    ("src/app/main.py", "Python"),
    ("stubs/os.pyi", "Python"),
    ("gui/launch.pyw", "Python"),
    ("web/app.ts", "TypeScript"),
    ("web/App.tsx", "TypeScript"),
    ("web/types.d.ts", "TypeScript"),
    ("web/server.mts", "TypeScript"),
    ("web/config.cts", "TypeScript"),
    ("web/index.js", "JavaScript"),
    ("web/App.jsx", "JavaScript"),
    ("web/module.mjs", "JavaScript"),
    ("web/common.cjs", "JavaScript"),
    ("cmd/server/main.go", "Go"),
    ("src/lib.rs", "Rust"),
    ("contracts/Token.sol", "Solidity"),
    ("src/main/java/App.java", "Java"),
    ("app/Main.kt", "Kotlin"),
    ("build.gradle.kts", "Kotlin"),
    ("src/main.c", "C"),
    ("include/list.h", "C"),
    ("src/main.cc", "C++"),
    ("src/main.cpp", "C++"),
    ("src/main.cxx", "C++"),
    ("src/main.c++", "C++"),
    ("include/vec.hpp", "C++"),
    ("include/vec.hh", "C++"),
    ("include/vec.hxx", "C++"),
    ("include/vec.ipp", "C++"),
    ("src/Program.cs", "C#"),
    ("lib/app.rb", "Ruby"),
    ("lib/tasks/db.rake", "Ruby"),
    ("app.gemspec", "Ruby"),
    ("Gemfile", "Ruby"),
    ("Rakefile", "Ruby"),
    ("public/index.php", "PHP"),
    ("Sources/App.swift", "Swift"),
    ("src/Main.scala", "Scala"),
    ("build.sc", "Scala"),
    ("scripts/setup.sh", "Shell"),
    ("scripts/setup.bash", "Shell"),
    ("scripts/setup.zsh", "Shell"),
    ("scripts/setup.ksh", "Shell"),
    ("home/.bashrc", "Shell"),
    (".zshrc", "Shell"),
    ("db/schema.sql", "SQL"),
    ("site/index.html", "HTML"),
    ("site/index.htm", "HTML"),
    ("site/style.css", "CSS"),
    ("init.lua", "Lua"),
    ("src/Main.hs", "Haskell"),
    ("src/Main.lhs", "Haskell"),
    ("lib/app.ex", "Elixir"),
    ("test/app_test.exs", "Elixir"),
    ("lib/main.dart", "Dart"),
    ("analysis/model.r", "R"),
    ("analysis/model.R", "R"),
    ("src/solver.jl", "Julia"),
    ("src/main.zig", "Zig"),
    (".github/workflows/ci.yml", "YAML"),
    ("config.yaml", "YAML"),
    ("pyproject.toml", "TOML"),
    ("package.json", "JSON"),
    (".vscode/settings.jsonc", "JSON"),
    ("README.md", "Markdown"),
    ("docs/guide.markdown", "Markdown"),
    ("Dockerfile", "Dockerfile"),
    ("docker/Dockerfile.dev", "Dockerfile"),
    ("docker/api.dockerfile", "Dockerfile"),
    ("Containerfile", "Dockerfile"),
    ("Makefile", "Makefile"),
    ("makefile", "Makefile"),
    ("GNUmakefile", "Makefile"),
    ("build/rules.mk", "Makefile"),
]


@pytest.mark.parametrize(("path", "language"), PATHS)
def test_detects_language_from_path(path, language):
    assert detect_language(path) == language


def test_every_language_is_detected_from_some_path():
    assert {language for _, language in PATHS} == set(LANGUAGES)


def test_languages_are_unique():
    assert len(set(LANGUAGES)) == len(LANGUAGES)


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("SRC/MAIN.PY", "Python"),
        ("App.TSX", "TypeScript"),
        ("lib/Model.Rb", "Ruby"),
        ("notes/TODO.MD", "Markdown"),
        ("Build.YML", "YAML"),
    ],
)
def test_extensions_are_case_insensitive(path, language):
    assert detect_language(path) == language


@pytest.mark.parametrize(
    "path",
    [
        "CMakeLists.txt",
        "BUILD",
        "notes.txt",
        "styles/main.scss",
        "styles/main.less",
        "script.pl",
        "logo.png",
        "notebook.ipynb",
        ".gitignore",
        ".env",
        "LICENSE",
        "bin/deploy",
        "archive.tar.gz",
        "trailing.",
        "Cargo.lock",
    ],
)
def test_unknown_paths_have_no_language(path):
    assert detect_language(path) is None


def test_only_the_last_path_component_counts():
    assert detect_language("Makefile.d/notes.txt") is None
    assert detect_language("src.py/README") is None
    assert detect_language("Dockerfile/build.sh") == "Shell"


@pytest.mark.parametrize(
    ("first_line", "language"),
    [
        ("#!/usr/bin/env python3", "Python"),
        ("#!/usr/bin/env python", "Python"),
        ("#!/usr/bin/python2.7", "Python"),
        ("#!/usr/local/bin/python3.11 -u", "Python"),
        ("#! /usr/bin/env python3\n", "Python"),
        ("#!/usr/bin/env python3\r\n", "Python"),
        ("#!/bin/sh", "Shell"),
        ("#!/bin/bash -e", "Shell"),
        ("#!/usr/bin/env bash", "Shell"),
        ("#!/bin/zsh", "Shell"),
        ("#!/bin/dash", "Shell"),
        ("#!/bin/ksh", "Shell"),
        ("#!/usr/bin/env node", "JavaScript"),
        ("#!/usr/bin/env -S node --experimental-modules", "JavaScript"),
        ("#!/usr/bin/env -S deno run --allow-net", "TypeScript"),
        ("#!/usr/bin/env -S NODE_ENV=production node", "JavaScript"),
        ("#!/usr/bin/env ruby", "Ruby"),
        ("#!/usr/bin/ruby -w", "Ruby"),
        ("#!/usr/bin/env php", "PHP"),
        ("#!/usr/bin/env lua5.1", "Lua"),
        ("#!/usr/bin/env Rscript", "R"),
        ("#!/usr/bin/env julia", "Julia"),
        ("#!/usr/bin/make -f", "Makefile"),
        ("#!/usr/bin/perl", None),
        ("#!/usr/bin/env perl", None),
        ("#!/usr/bin/env", None),
        ("#!", None),
        ("# not a shebang: python", None),
        ("import os", None),
        ("", None),
    ],
)
def test_detects_language_from_shebang(first_line, language):
    assert detect_language("bin/tool", first_line) == language


def test_name_wins_over_shebang():
    assert detect_language("setup.sh", "#!/usr/bin/env python3") == "Shell"
    assert detect_language("Makefile", "#!/bin/sh") == "Makefile"


def test_shebang_decides_for_unknown_extensions():
    assert detect_language("cgi-bin/app.cgi", "#!/usr/bin/env python3") == "Python"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("bin/deploy", True),
        ("scripts/run", True),
        ("README", True),
        ("src/main.py", False),
        ("notes.txt", False),
        ("Makefile", False),
        ("Dockerfile", False),
        ("Gemfile", False),
        (".gitignore", False),
        (".bashrc", False),
        ("bin.d/deploy", True),
    ],
)
def test_needs_first_line(path, expected):
    assert needs_first_line(path) is expected


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_has_a_pygments_lexer(language):
    lexer = pygments_lexer(language)
    assert lexer is not None
    assert list(lexer.get_tokens("x\n"))


def test_pygments_lexers_are_cached_and_specific():
    assert pygments_lexer("Python") is pygments_lexer("Python")
    assert pygments_lexer("C#").name == "C#"
    assert pygments_lexer("Shell").name == "Bash"
    assert pygments_lexer("Dockerfile").name == "Docker"
    assert pygments_lexer("Makefile").name == "Makefile"


def test_unknown_language_has_no_lexer():
    assert pygments_lexer("Perl") is None
    assert pygments_lexer("python") is None
