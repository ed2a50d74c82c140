"""Which language a changed file is written in, from its name and, failing that, its shebang.

Detection never reads file contents beyond the first line: it runs once per changed file over
millions of commits, so it is a handful of dict lookups.
"""

from __future__ import annotations

import functools

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name

# `prepare` numbers these names by position into the prepared data's languages.json, which
# travels into the model folder; saved data and models keep their own table, so a change
# here changes only what is prepared afterwards.
LANGUAGES: tuple[str, ...] = (
    "Python",
    "TypeScript",
    "JavaScript",
    "Go",
    "Rust",
    "Solidity",
    "Java",
    "Kotlin",
    "C",
    "C++",
    "C#",
    "Ruby",
    "PHP",
    "Swift",
    "Scala",
    "Shell",
    "SQL",
    "HTML",
    "CSS",
    "Lua",
    "Haskell",
    "Elixir",
    "Dart",
    "R",
    "Julia",
    "Zig",
    "YAML",
    "TOML",
    "JSON",
    "Markdown",
    "Dockerfile",
    "Makefile",
)

# Exact, case-sensitive names: these are the spellings the tools themselves look for.
_FILENAMES = {
    "Dockerfile": "Dockerfile",
    "Containerfile": "Dockerfile",
    "Makefile": "Makefile",
    "makefile": "Makefile",
    "GNUmakefile": "Makefile",
    "Gemfile": "Ruby",
    "Rakefile": "Ruby",
    "Podfile": "Ruby",
    "Vagrantfile": "Ruby",
    "Brewfile": "Ruby",
    "Pipfile": "TOML",
    ".bashrc": "Shell",
    ".bash_profile": "Shell",
    ".bash_logout": "Shell",
    ".profile": "Shell",
    ".zshrc": "Shell",
    ".zshenv": "Shell",
    ".zprofile": "Shell",
    ".kshrc": "Shell",
}

# `Dockerfile.dev`, `Dockerfile.alpine`: the suffix names a variant, not a format.
_NAME_PREFIXES = ("Dockerfile.", "Containerfile.")

# Lower-case extensions without the dot.
_EXTENSIONS = {
    **dict.fromkeys(("py", "pyi", "pyw"), "Python"),
    **dict.fromkeys(("ts", "tsx", "mts", "cts"), "TypeScript"),
    **dict.fromkeys(("js", "jsx", "mjs", "cjs"), "JavaScript"),
    "go": "Go",
    "rs": "Rust",
    "sol": "Solidity",
    "java": "Java",
    **dict.fromkeys(("kt", "kts"), "Kotlin"),
    # `.h` is also C++ and Objective-C; C's lexer reads all three well enough.
    **dict.fromkeys(("c", "h"), "C"),
    **dict.fromkeys(("cc", "cpp", "cxx", "c++", "hpp", "hh", "hxx", "ipp"), "C++"),
    "cs": "C#",
    **dict.fromkeys(("rb", "rake", "gemspec"), "Ruby"),
    "php": "PHP",
    "swift": "Swift",
    **dict.fromkeys(("scala", "sc"), "Scala"),
    **dict.fromkeys(("sh", "bash", "zsh", "ksh"), "Shell"),
    "sql": "SQL",
    **dict.fromkeys(("html", "htm", "xhtml"), "HTML"),
    # Not `.scss`, `.sass` or `.less`: they are languages of their own.
    "css": "CSS",
    "lua": "Lua",
    **dict.fromkeys(("hs", "lhs"), "Haskell"),
    **dict.fromkeys(("ex", "exs"), "Elixir"),
    "dart": "Dart",
    "r": "R",
    "jl": "Julia",
    "zig": "Zig",
    **dict.fromkeys(("yaml", "yml"), "YAML"),
    "toml": "TOML",
    **dict.fromkeys(("json", "jsonc"), "JSON"),
    **dict.fromkeys(("md", "markdown"), "Markdown"),
    **dict.fromkeys(("dockerfile", "containerfile"), "Dockerfile"),
    **dict.fromkeys(("mk", "mak"), "Makefile"),
}

# Interpreter names from shebangs, lower-cased, with version suffixes (`python3.11`) removed.
_INTERPRETERS = {
    **dict.fromkeys(("python", "pythonw", "pypy"), "Python"),
    **dict.fromkeys(("node", "nodejs"), "JavaScript"),
    # Deno runs TypeScript natively, and the TypeScript lexer also reads plain JavaScript.
    **dict.fromkeys(("deno", "ts-node", "tsx"), "TypeScript"),
    **dict.fromkeys(("sh", "bash", "zsh", "dash", "ksh", "mksh", "ash"), "Shell"),
    "ruby": "Ruby",
    "php": "PHP",
    **dict.fromkeys(("lua", "luajit"), "Lua"),
    "rscript": "R",
    "julia": "Julia",
    **dict.fromkeys(("runghc", "runhaskell"), "Haskell"),
    "elixir": "Elixir",
    "dart": "Dart",
    "swift": "Swift",
    "scala": "Scala",
    "make": "Makefile",
}

PYGMENTS_ALIASES = {
    "Python": "python",
    "TypeScript": "typescript",
    "JavaScript": "javascript",
    "Go": "go",
    "Rust": "rust",
    "Solidity": "solidity",
    "Java": "java",
    "Kotlin": "kotlin",
    "C": "c",
    "C++": "cpp",
    "C#": "csharp",
    "Ruby": "ruby",
    "PHP": "php",
    "Swift": "swift",
    "Scala": "scala",
    "Shell": "bash",
    "SQL": "sql",
    "HTML": "html",
    "CSS": "css",
    "Lua": "lua",
    "Haskell": "haskell",
    "Elixir": "elixir",
    "Dart": "dart",
    "R": "r",
    "Julia": "julia",
    "Zig": "zig",
    "YAML": "yaml",
    "TOML": "toml",
    "JSON": "json",
    "Markdown": "markdown",
    "Dockerfile": "docker",
    "Makefile": "make",
}


def _interpreter(first_line: str) -> str:
    """The program a `#!` line runs, looking through `/usr/bin/env [-S] [VAR=value]`."""
    words = first_line[2:].split()
    if not words:
        return ""
    program = words[0].rpartition("/")[2]
    if program == "env":
        program = next((w for w in words[1:] if not w.startswith("-") and "=" not in w), "")
    return program.lower().rstrip("0123456789.")


def detect_language(path: str, first_line: str | None = None) -> str | None:
    """The language of `path` (repo-relative, POSIX), or None when it is not one of LANGUAGES.

    The file name decides first, then the extension, then the shebang in `first_line` if given.
    """
    name = path.rpartition("/")[2]
    language = _FILENAMES.get(name)
    if language is not None:
        return language
    if name.startswith(_NAME_PREFIXES):
        return "Dockerfile"
    stem, _, extension = name.rpartition(".")
    if stem:
        language = _EXTENSIONS.get(extension.lower())
        if language is not None:
            return language
    if first_line is not None and first_line.startswith("#!"):
        return _INTERPRETERS.get(_interpreter(first_line))
    return None


def needs_first_line(path: str) -> bool:
    """Whether only the file's first line can tell its language.

    That is a name with no dot at all that is not a known file name, like `bin/deploy`: commands
    meant to be run by name go without an extension and carry a shebang instead. Dotfiles such as
    `.gitignore` are configuration, never scripts, so they are not worth a read.
    """
    name = path.rpartition("/")[2]
    return "." not in name and name not in _FILENAMES


@functools.cache
def pygments_lexer(language: str) -> Lexer | None:
    """A shared Pygments lexer for `language` (one of LANGUAGES), or None for any other name.

    Lexers keep no state between `get_tokens` calls, so one instance per language serves all
    files. The PHP lexer keeps Pygments' default of lexing HTML until `<?php`, as PHP itself does.
    """
    alias = PYGMENTS_ALIASES.get(language)
    return None if alias is None else get_lexer_by_name(alias)
