"""Predicates that keep machine-made commits and files out of the training data.

Each one runs per commit or per changed file over millions of commits, so they stick to set
lookups, `str.endswith` and `in`, and run their few regexes on short strings only (a name, a
subject line), never on file contents.
"""

from __future__ import annotations

import re

# Bots that sign commits with their own name rather than a `[bot]` account, lower-cased with
# spaces as hyphens. None of these is a person's name.
_BOT_NAMES = frozenset(
    {
        "dependabot",
        "dependabot-preview",
        "renovate",
        "greenkeeper",
        "greenkeeperio",
        "github-actions",
        "github-action",
        "snyk-bot",
        "pre-commit-ci",
        "semantic-release-bot",
        "allcontributors",
        "all-contributors",
        "mergify",
        "imgbot",
        "imgbotapp",
        "codecov",
        "codecov-io",
    }
)
# `git config user.email` values that workflows copy from GitHub's documentation.
_BOT_EMAILS = frozenset({"action@github.com", "actions@github.com", "github-actions@github.com"})
_BOT_DOMAINS = frozenset({"dependabot.com", "greenkeeper.io", "renovateapp.com"})
# Words, splitting camelCase too, so `ReleaseBot` has the word "bot" but `Talbot` does not.
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def is_bot_author(name: str, email: str) -> bool:
    """Whether a commit's author is automation rather than a person.

    A bot is a GitHub App account (`name[bot]`), one of the well-known bots by name or address, or
    an identity with "bot" as a word of its own: `ci-bot`, `release_bot`, `ReleaseBot`. GitHub's
    `web-flow` (GitHub <noreply@github.com>) commits for people using the web editor: it is human.
    """
    name_lower = name.lower()
    email_lower = email.lower()
    if "[bot]" in name_lower or "[bot]" in email_lower:
        return True
    local, _, domain = email_lower.partition("@")
    # GitHub's private addresses put the account after an id: `12345+login@users.noreply...`.
    local = local.rpartition("+")[2]
    if (
        name_lower.replace(" ", "-") in _BOT_NAMES
        or local in _BOT_NAMES
        or email_lower in _BOT_EMAILS
        or domain in _BOT_DOMAINS
    ):
        return True
    if "bot" not in name_lower and "bot" not in local:
        return False
    words = _WORD.findall(f"{name} {email.partition('@')[0].rpartition('+')[2]}")
    return any(word.lower() == "bot" for word in words)


_VERSION = r"v?\d+(?:\.\d+)+(?:[-+][0-9a-z.+-]*)?"
# What squash merges and release tooling append to a subject: `(#123)`, `[skip ci]`.
_END = r"(?:\s+\(#\d+\))?(?:\s*\[(?:skip ci|ci skip)\])?\.?\s*$"
# Subject patterns after the default messages of Dependabot, Renovate, semantic-release,
# changesets, Maven's release plugin, bump2version, pre-commit.ci, Crowdin and git's own merges.
# Most must span the whole subject, so a human subject that merely starts with "Bump", "Release"
# or "Update" and goes on to say something else does not fit.
_GENERATED_SUBJECTS = (
    # Dependabot: `Bump lodash from 4.17.20 to 4.17.21 in /web`, grouped updates.
    rf"bump\s+\S+\s+from\s+\S+\s+to\s+\S+(?:\s+in\s+\S+)?{_END}",
    r"bump\s+the\s+\S+\s+group\b",
    # Version bumps by hand or by bump2version: `Bump version: 1.0 → 1.1`, `bump to 2.0.1`.
    r"bump(?:ed|s)?\s+(?:the\s+)?(?:package\s+)?version\b",
    rf"bump(?:ed)?\s+(?:\S+\s+)?(?:to\s+)?{_VERSION}{_END}",
    rf"(?:update|set|increment)\s+(?:the\s+)?version(?:\s+number)?(?:\s+to\s+{_VERSION})?{_END}",
    r"version\s+(?:bump|packages)\b",
    # Releases: `1.2.3`, `v1.2.3`, `Release v2.0.0`, `chore(release): 1.4.0 [skip ci]`.
    rf"(?:(?:new\s+)?releas(?:e|ed|ing)\s+|version\s+|publish\s+)?{_VERSION}{_END}",
    rf"prepare(?:\s+for)?\s+(?:the\s+)?(?:next\s+)?release(?:\s+{_VERSION})?{_END}",
    rf"publish{_END}",
    r"\[maven-release-plugin\]",
    r"\[gradle release plugin\]",
    # Renovate: `Update dependency react to v18`, `Update actions/checkout action to v4`.
    r"update\s+(?:dependency|module|rust\s+crate|\S+\s+(?:monorepo|action))\s+.*\bto\s+v?\d",
    r"update\s+all\s+non-major\s+dependencies",
    r"lock\s+file\s+maintenance",
    r"pin\s+dependencies\b",
    r"[a-z]+\((?:deps|deps-dev|changelog)\)",
    r"\[pre-commit\.ci\]",
    r"pre-commit\s+autoupdate",
    rf"update\s+pre-commit\s+hooks?{_END}",
    rf"(?:updated?\s+(?:the\s+)?)?(?:changelog(?:\.\w+)?|changes\.(?:md|rst|txt))"
    rf"(?:\s+for\s+(?:release\s+)?{_VERSION})?{_END}",
    # Merges by git, GitHub, GitLab, Gerrit and Bitbucket.
    r"merge\s+(?:remote-tracking\s+)?branch(?:es)?\s+['\"]",
    r"merge\s+(?:tag|commit)\s+['\"]",
    r"merge\s+\"",
    r"merge\s+(?:pull\s+request|pr)\s+#?\d",
    r"merged\s+in\s+\S+\s+\(pull\s+request\s+#\d",
    # Workflows that commit: `Automated commit`, git-auto-commit-action, create-pull-request.
    r"auto(?:mated|matic)?[\s-]*(?:commit|generated|regenerated)\b",
    r"automated\s+(?:update|change|sync|build|deploy|release|publish)",
    r"apply\s+automatic\s+changes",
    r"\[create-pull-request\]",
    r"deploy(?:ing)?\s+to\s+gh-pages\b",
    # Crowdin: `New translations messages.json (French)`.
    r"new\s+(?:crowdin\s+)?translations\b",
)
# Anchored at the start, after an optional Conventional Commits prefix such as `chore(release): `.
_GENERATED_SUBJECT = re.compile(
    r"(?:[a-z]+(?:\([^)]*\))?!?:\s*)?(?:" + "|".join(_GENERATED_SUBJECTS) + ")", re.IGNORECASE
)
_RELEASE_WORD = re.compile(r"\b(?:release|version|bump|publish)", re.IGNORECASE)


def is_generated_message(message: str) -> bool:
    """Whether a commit message was written by automation: releases, bumps, merges, bots.

    Only the subject (the first non-empty line) is judged: bodies of human commits quote anything.
    """
    subject = message.strip().partition("\n")[0].strip()
    if _GENERATED_SUBJECT.match(subject):
        return True
    lower = subject.lower()
    # Weblate: `Translated using Weblate (German)`, `Added translation using Weblate (French)`.
    if "weblate" in lower and "translat" in lower:
        return True
    # Release jobs mark their commits so they do not trigger another pipeline run.
    return ("skip ci" in lower or "ci skip" in lower) and _RELEASE_WORD.search(subject) is not None


# Directories of third-party code, after GitHub Linguist's vendor.yml: package managers' install
# folders, virtual environments, copied-in libraries, and build output.
_VENDOR_DIRS = frozenset(
    {
        "vendor",
        "vendors",
        "node_modules",
        "third_party",
        "third-party",
        "thirdparty",
        "bower_components",
        "jspm_packages",
        "Pods",
        "Carthage",
        ".yarn",
        "site-packages",
        ".venv",
        "venv",
        "dist",
    }
)


def is_vendored(path: str) -> bool:
    """Whether `path` lies inside a third-party or build-output directory.

    Directory names are compared exactly, so `vendored_utils.py` and `src/vendorlib/` are kept.
    """
    return not _VENDOR_DIRS.isdisjoint(path.split("/")[:-1])


# Files written by package managers, never by hand.
_LOCKFILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "bun.lock",
        "deno.lock",
        "Cargo.lock",
        "poetry.lock",
        "Pipfile.lock",
        "uv.lock",
        "pdm.lock",
        "composer.lock",
        "Gemfile.lock",
        "go.sum",
        "mix.lock",
        "pubspec.lock",
        "Podfile.lock",
        "Cartfile.resolved",
        "packages.lock.json",
        "flake.lock",
        "gradle.lockfile",
        "Package.resolved",
        "conda-lock.yml",
        ".terraform.lock.hcl",
    }
)


def is_lockfile(path: str) -> bool:
    """Whether `path` is a package manager's lock file (Gradle also writes `*.lockfile`)."""
    name = path.rpartition("/")[2]
    return name in _LOCKFILES or name.endswith(".lockfile")


# Name endings of generated files, lower-cased, after Linguist's generated.rb: protocol buffer and
# gRPC stubs, Dart's build_runner outputs, Visual Studio designer files, Go generators, minified
# bundles, source maps and TypeScript declarations.
_GENERATED_SUFFIXES = (
    "_pb2.py",
    "_pb2.pyi",
    "_pb2_grpc.py",
    ".pb.go",
    ".pb.gw.go",
    ".pb.cc",
    ".pb.h",
    "_pb.js",
    "_pb.d.ts",
    ".pb.swift",
    ".pb.dart",
    ".pbenum.dart",
    ".pbjson.dart",
    ".pbgrpc.dart",
    ".g.dart",
    ".freezed.dart",
    ".designer.cs",
    "_generated.go",
    ".min.js",
    ".min.css",
    ".map",
    ".d.ts",
)


def is_generated_path(path: str) -> bool:
    """Whether the file name alone says a tool wrote it (`api_pb2.py`, `user.generated.ts`)."""
    name = path.rpartition("/")[2].lower()
    return name.endswith(_GENERATED_SUFFIXES) or ".generated." in name


# Markers that code generators put in a file's first lines, lower-cased: Go's `Code generated ...
# DO NOT EDIT.`, Meta's `@generated`, protoc's banner and the common English phrasings.
_GENERATED_MARKERS = (
    "do not edit",
    "@generated",
    "code generated by",
    "autogenerated",
    "auto-generated",
    "automatically generated",
    "this file was generated",
    "generated by the protocol buffer compiler",
)


def has_generated_header(text: str) -> bool:
    """Whether the first 5 lines (at most 2,000 characters) carry a code generator's marker.

    Only the header counts: a test that asserts on the string "DO NOT EDIT" is not generated.
    """
    head = "\n".join(text[:2000].split("\n", 5)[:5]).lower()
    return any(marker in head for marker in _GENERATED_MARKERS)


def is_minified(text: str, mean_line_chars: int = 110) -> bool:
    """Whether `text` is minified or carries a generated blob.

    That is a mean line length above `mean_line_chars`, or any line over 10,000 characters (an
    inlined data URI, a serialized model). Texts under 500 characters are never minified: a
    one-line config file is short by nature.
    """
    size = len(text)
    if size < 500:
        return False
    newlines = text.count("\n")
    lines = newlines + (not text.endswith("\n"))
    if (size - newlines) / lines > mean_line_chars:
        return True
    return size > 10_000 and _has_line_longer_than(text, 10_000)


def _has_line_longer_than(text: str, limit: int) -> bool:
    """Whether some line exceeds `limit` characters, with one C-level search per `limit` chars.

    Each window of `limit + 1` characters from a line start must hold a newline; lines wholly
    inside the window are short by construction, so the search jumps past them.
    """
    start = 0
    while len(text) - start > limit:
        newline = text.rfind("\n", start, start + limit + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


def is_binary(data: bytes) -> bool:
    """Git's test for binary content: a NUL byte within the first 8,000 bytes."""
    return data.find(b"\0", 0, 8000) != -1
