"""Prompts for code completion: the layout each model was trained on, packed into a token budget.

A prompt is built from `PromptParts` (the code before and after the cursor, the file's path,
language and repository, snippets from other files, recent changes of the file) by a
`PromptFormat`, which knows one model's layout and the end markers to stop at:

    zen-coder     the formats `prepare` trains (zen_coder.data.samples), spelled with the model's
                  role tokens: the file's recent changes as a file-history block, each snippet as
                  a file block, then the fill-in-the-middle block
                      <|history|><|repo|>r<|path|>p<|lang|>l<|change|><|message|>m<|diff|>d ...
                      <|repo|>r<|path|>q<|lang|>l<|after|>snippet ...
                      <|repo|>r<|path|>p<|lang|>l<|fim_suffix|>suf<|fim_prefix|>pre<|fim_middle|>
                  (suffix first, one of the two orders prepare trains: see "Prefix reuse"; without
                  a suffix the last block is the plain file format, `<|after|>pre`)
    qwen          Qwen2.5-Coder's repository layout: <|repo_name|>r\\n<|file_sep|>q\\nsnippet\\n
                  ... <|file_sep|>p\\n<|fim_prefix|>pre<|fim_suffix|>suf<|fim_middle|>
    starcoder2    StarCoder2's: <repo_name>r<file_sep>q\\nsnippet ... <file_sep><fim_prefix>p\\n
                  pre<fim_suffix>suf<fim_middle>
    psm           the family's fill-in-the-middle markers in prefix-suffix-middle order, context
                  as comments at the top of the prefix (StarCoder 1, DeepSeek-Coder, Code Llama)
    spm           suffix first, as Codestral was trained: [SUFFIX]suf[PREFIX]pre
    plain         no fill-in-the-middle (Llama 3): comments and the prefix

The budget gives the prefix and the suffix each a share of the tokens; retrieved context gets the
rest, and whatever one part leaves unused goes to the others. The prefix keeps its end and the
suffix its start, cut at line boundaries where a whole line fits.

Prefix reuse: an editor sends a prompt at every pause in typing, and the engine computes again
only what follows the longest start it has cached. So a prompt's start must not move while the
user types: the zen-coder layout puts the suffix before the prefix (typing extends the prompt's
end only), and a cut prefix starts on a line whose number is a multiple of STABLE_START_LINES
(the start moves once every so many lines typed, not at every line).

A prompt is a sequence of pieces, each a special token or text. `Prompt.text` spells the special
tokens out (what an OpenAI-compatible server receives); `Prompt.ids` inserts them by id and
encodes text as text, as `prepare` does, so code that spells "<|endoftext|>" cannot forge one.

Time channel: parts with `Ages` (a repository's blame ages of the edited file) give the zen-coder
layout's tokens the times `prepare` trains with (docs/prepare.md, "Time channel"): each token of
the prefix and the suffix the time of its line, by the tokenizer's character offsets as
`zen_coder.data.pack.tokenize` does; headers and markers the file's time; the history block's
header its first change's position - 1 and each change its own position; a snippet its file's
position (header) and its file's unknown-origin time (code), its lines not blamed.
`Prompt.ids_and_times` returns them; without ages (or in another layout) there are none and the
caller gives every token one time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from zen_coder.data.blame import Times, line_count
from zen_coder.data.pack import token_line_times
from zen_coder.data.tokenizer import BASE_FAMILY_TOKENS, EOS, RoleTokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.history.languages import LANGUAGES, detect_language

ZEN_CODER = "zen-coder"
# A cut prefix starts on a line whose number is a multiple of this where one fits (see "Prefix
# reuse" above): typing moves the prompt's start once every so many lines. The price is at most
# this many lines of prefix less than the budget holds.
STABLE_START_LINES = 8
SPECIAL = True
TEXT = False
Piece = tuple[bool, str]  # (is a special token, the token or the text)
# A piece's time: one for all its tokens, or one per line of its text.
PieceTime = int | Times


# Editors' language identifiers (VS Code, Neovim filetypes, Tabby) that are not a mined name.
_EDITOR_LANGUAGES = {
    "typescriptreact": "TypeScript",
    "tsx": "TypeScript",
    "javascriptreact": "JavaScript",
    "jsx": "JavaScript",
    "golang": "Go",
    "cpp": "C++",
    "cxx": "C++",
    "csharp": "C#",
    "cs": "C#",
    "shellscript": "Shell",
    "bash": "Shell",
    "sh": "Shell",
    "zsh": "Shell",
    "py": "Python",
    "rs": "Rust",
    "rb": "Ruby",
    "kt": "Kotlin",
    "js": "JavaScript",
    "ts": "TypeScript",
    "yml": "YAML",
    "md": "Markdown",
    "make": "Makefile",
}
_LANGUAGE_NAMES = {name.lower(): name for name in LANGUAGES}

# The line comment each language writes context in, for layouts without a repository format.
_SLASHES = frozenset(
    {"TypeScript", "JavaScript", "Go", "Rust", "Solidity", "Java", "Kotlin", "C", "C++", "C#"}
    | {"PHP", "Swift", "Scala", "Dart", "Zig"}
)
_DASHES = ("SQL", "Lua", "Haskell")


def canonical_language(language: str | None, path: str | None = None) -> str | None:
    """The language as mining names it ("Python", "C++"): the name an editor sent, in any case
    or as an editor's identifier ("typescriptreact", "cpp"), else what mining detects from the
    path; None when neither says. Training wrote these names after <|lang|>, and the model's
    language table (languages.json) numbers them."""
    if language:
        key = language.strip().lower()
        found = _LANGUAGE_NAMES.get(key) or _EDITOR_LANGUAGES.get(key)
        if found:
            return found
    return detect_language(path) if path else None


def comment_prefix(language: str | None) -> str:
    """The line comment of `language` (a mined name), "#" where unknown."""
    if language in _SLASHES:
        return "// "
    if language in _DASHES:
        return "-- "
    return "# "


@dataclass(frozen=True)
class Snippet:
    """Code from another file of the repository, with its retrieval score (higher: closer)."""

    path: str
    text: str
    score: float = 0.0


@dataclass(frozen=True)
class Change:
    """A recent change of the edited file, as mining records it: its diff and message, and the
    file's history position after it (the time channel)."""

    commit: str
    message: str
    diff: str
    time: int


@dataclass(frozen=True)
class Budget:
    """The prompt's size in tokens, and the shares of it the prefix and the suffix may take;
    repository context gets the rest. Defaults: Tabby's 1,536 input tokens."""

    tokens: int = 1536
    prefix: float = 0.5
    suffix: float = 0.2

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ZenCoderError(f"prompt budget {self.tokens} tokens; give at least 1")
        shares_ok = 0 <= self.prefix <= 1 and 0 <= self.suffix <= 1
        if not shares_ok or self.prefix + self.suffix > 1:
            raise ZenCoderError(
                f"prompt shares prefix {self.prefix} and suffix {self.suffix} must lie in 0..1 "
                "and add up to at most 1; the context gets the rest"
            )

    @property
    def context(self) -> float:
        return 1.0 - self.prefix - self.suffix


@dataclass(frozen=True)
class Ages:
    """The times of a prompt's tokens where a repository knows them: `lines`, one per line of
    the editor's text (prefix + suffix, lines cut at "\\n"); `header`, the time of the file's
    header and markers; `snippets`, per path of another file, the time of its header and of its
    code."""

    lines: Times
    header: int
    snippets: dict[str, tuple[int, int]] = field(default_factory=dict)

    def code(self, whole: str, start: int, piece: str) -> PieceTime:
        """The line times of `piece`, the part of the editor's text `whole` from its line
        `start` on (the header's time where `lines` is not of `whole`)."""
        if len(self.lines) != line_count(whole):
            return self.header
        return self.lines[start : start + line_count(piece)]


@dataclass
class PromptParts:
    """What a completion request holds. `suffix` None asks for a plain continuation; "" for
    fill-in-the-middle at the end of the file."""

    prefix: str
    suffix: str | None = None
    path: str | None = None
    language: str | None = None
    repo: str | None = None
    snippets: list[Snippet] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    ages: Ages | None = None


@dataclass(frozen=True)
class Prompt:
    """A built prompt: its pieces, its text, its size as the budget counted it, and the snippets
    and changes that fit (the ones a client may be shown as used)."""

    pieces: tuple[Piece, ...]
    prompt_tokens: int
    snippets: list[Snippet]
    changes: list[Change]
    times: tuple[PieceTime, ...] | None = None  # each piece's, where the parts had ages

    @property
    def text(self) -> str:
        return "".join(value for _, value in self.pieces)

    def ids(self, tokenizer: Tokenizer) -> list[int]:
        """The token ids: special pieces by id, text encoded as text (`tokenizer` must leave
        special-token spellings in text as text, as `read_tokenizer`'s does). No BOS: the
        caller adds the tokenizer's where it has one."""
        return self.ids_and_times(tokenizer)[0]

    def ids_and_times(self, tokenizer: Tokenizer) -> tuple[list[int], list[int] | None]:
        """The token ids (as `ids`) and each one's time, None where the prompt has no times: a
        special token takes its piece's time, a text token that of the line of its piece where
        its first character lies."""
        ids: list[int] = []
        times: list[int] = []
        run: list[tuple[str, PieceTime]] = []  # adjacent texts, encoded as one
        piece_times = self.times if self.times is not None else (0,) * len(self.pieces)
        ends: list[Piece] = [(SPECIAL, "")]  # the last texts' end
        for (special, value), time in zip([*self.pieces, *ends], [*piece_times, 0], strict=True):
            if not special:
                run.append((value, time))
                continue
            text = "".join(piece for piece, _ in run)
            if text:  # adjacent texts as one, as the budget counted them
                encoding = tokenizer.encode(text, add_special_tokens=False)
                ids += encoding.ids
                times += _run_times(run, encoding.offsets)
            run = []
            if value:
                ids.append(self._special_id(tokenizer, value))
                times.append(time if isinstance(time, int) else 0)
        return ids, times if self.times is not None else None

    @staticmethod
    def _special_id(tokenizer: Tokenizer, token: str) -> int:
        id_ = tokenizer.token_to_id(token)
        if id_ is None:  # Code Llama's markers are written without their "▁"
            id_ = tokenizer.token_to_id(_SENTENCEPIECE_SPACE + token)
        if id_ is None:
            raise ZenCoderError(
                f"the tokenizer has no token {token!r} this prompt format uses; build the "
                "format from this model's tokenizer (PromptFormat.from_tokenizer)"
            )
        return id_


def _run_times(run: list[tuple[str, PieceTime]], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The times of the tokens of adjacent texts encoded as one: each that of the piece (and,
    for per-line times, the line of it) holding the token's first character."""
    times: list[int] = []
    begin = 0
    token = 0
    for index, (text, time) in enumerate(run):
        end = begin + len(text)
        last = index == len(run) - 1
        first = token
        while token < len(offsets) and (last or offsets[token][0] < end):
            token += 1
        if isinstance(time, int):
            times += [time] * (token - first)
        elif token > first:
            local = [(start - begin, stop - begin) for start, stop in offsets[first:token]]
            times += token_line_times(text, time, local).tolist()
        begin = end
    return times


# Roles by short name: the format's own tokens are looked up through these.
_ROLES = {
    "eos": EOS,
    "repo": "<|repo|>",
    "path": "<|path|>",
    "lang": "<|lang|>",
    "after": "<|after|>",
    "history": "<|history|>",
    "change": "<|change|>",
    "message": "<|message|>",
    "diff": "<|diff|>",
    "prefix": "<|fim_prefix|>",
    "suffix": "<|fim_suffix|>",
    "middle": "<|fim_middle|>",
}
# Each family's layout, and end markers besides its tokens for the roles (which all stop).
_FAMILY_LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Qwen2.5-Coder, Qwen3-Coder": ("qwen", ("<|fim_pad|>", "<|im_end|>")),
    "StarCoder2": ("starcoder2", ()),
    "StarCoder, StarCoderBase": ("psm", ()),
    "DeepSeek-Coder": ("psm", ("<|EOT|>",)),
    "CodeLlama": ("psm", ("<EOT>",)),
    "Codestral": ("spm", ()),
    "Llama 3": ("plain", ("<|eot_id|>",)),
}
_FIM_ROLES = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
_REPOSITORY_LAYOUTS = ("qwen", "starcoder2")
# Code Llama's markers are SentencePiece pieces ("▁<PRE>"); as text they are written with the
# spaces Code Llama's infilling prompt puts around them.
_SENTENCEPIECE_SPACE = "\u2581"


@dataclass(frozen=True)
class PromptFormat:
    """One model's prompt layout: its name, its tokens for zen-coder's roles (short names:
    "repo", "path", "prefix", ...), and the end markers a completion stops at."""

    name: str
    layout: str
    tokens: dict[str, str]
    stop: tuple[str, ...]

    @classmethod
    def from_tokenizer(cls, roles: RoleTokenizer) -> PromptFormat:
        """The format of a model with this tokenizer (native, or a Hugging Face folder).

        A tokenizer that has a token for every role is one `prepare` made or extended: the model
        was trained on zen-coder's formats, spelled with these tokens (a base's own markers
        where it had them). A tokenizer that lacked some (`read_tokenizer` just added them,
        untrained) is a published base model's: it gets its family's own layout, found by its
        tokens (its fill-in-the-middle markers alone, in its family's order, where it lacks the
        family's repository markers, as CodeGemma lacks Qwen's), or plain continuation if it has
        none."""
        if not roles.added:
            spelled = roles.role_tokens()
            return cls._zen_coder({short: spelled[role] for short, role in _ROLES.items()})
        # The base's own tokens: read_tokenizer's additions (named as the roles) are untrained.
        spelled = {r: t for r, t in roles.role_tokens().items() if r not in roles.added}
        eos = {EOS: spelled[EOS]}
        for family, family_tokens in BASE_FAMILY_TOKENS.items():
            markers = {role: token for role, token in family_tokens.items() if role != EOS}
            if markers and all(spelled.get(role) == token for role, token in markers.items()):
                return cls._family(family, family_tokens | eos)
        for family, family_tokens in BASE_FAMILY_TOKENS.items():
            if all(role in family_tokens for role in _FIM_ROLES) and all(
                spelled.get(role) == family_tokens[role] for role in _FIM_ROLES
            ):
                fim = {role: family_tokens[role] for role in _FIM_ROLES}
                return cls._family(family, fim | eos, fim_only=True)
        return cls._family("Llama 3", eos)

    @classmethod
    def from_family(cls, family: str) -> PromptFormat:
        """The format of a model served elsewhere (an OpenAI-compatible server), by family:
        "zen-coder" (a model `prepare` trained a tokenizer for) or a name of
        BASE_FAMILY_TOKENS ("Qwen2.5-Coder", "StarCoder2", "Codestral", ...; any case, and any
        one of a key's comma-separated names)."""
        wanted = family.strip().lower()
        if wanted == ZEN_CODER:
            return cls._zen_coder({short: role for short, role in _ROLES.items()})
        for key, tokens in BASE_FAMILY_TOKENS.items():
            if wanted in (name.strip().lower() for name in key.split(",")):
                return cls._family(key, tokens)
        names = [ZEN_CODER, *(n.strip() for key in BASE_FAMILY_TOKENS for n in key.split(","))]
        raise ZenCoderError(f"unknown model family {family!r}; choose one of {', '.join(names)}")

    @classmethod
    def _zen_coder(cls, tokens: dict[str, str]) -> PromptFormat:
        stop = tuple(tokens[name] for name in ("eos", "repo", "path", "prefix", "suffix", "middle"))
        return cls(ZEN_CODER, "zen-coder", tokens, stop)

    @classmethod
    def _family(
        cls, family: str, family_tokens: dict[str, str], fim_only: bool = False
    ) -> PromptFormat:
        layout, extra_stops = _FAMILY_LAYOUTS[family]
        if fim_only and layout in _REPOSITORY_LAYOUTS:
            layout = "psm"
        tokens = {
            short: family_tokens[role] for short, role in _ROLES.items() if role in family_tokens
        }
        spelled = (token.removeprefix(_SENTENCEPIECE_SPACE) for token in tokens.values())
        stop = tuple(dict.fromkeys([*spelled, *extra_stops]))
        return cls(family.split(",")[0].strip(), layout, tokens, stop)

    def build(self, parts: PromptParts, budget: Budget, count: Callable[[str], int]) -> Prompt:
        """The prompt for `parts` in this layout within `budget`, counting tokens with `count`
        (text to its number of tokens; each special token counts one)."""
        return _Packer(self, parts, budget, count).pack()

    # Rendering: pieces of each part of the layout.

    def pieces(
        self,
        parts: PromptParts,
        prefix: str,
        suffix: str | None,
        snippets: Sequence[Snippet],
        changes: Sequence[Change],
    ) -> tuple[list[Piece], tuple[PieceTime, ...] | None]:
        """The prompt's pieces with the prefix, suffix and context given (already cut), and
        each piece's time as training gives it: None where the parts have no ages or the layout
        is not one zen-coder trains (its tokens take one time)."""
        language = canonical_language(parts.language, parts.path)
        if self.layout == "zen-coder":
            timed = self._zen_coder_pieces(parts, language, prefix, suffix, snippets, changes)
            pieces = [(special, value) for special, value, _ in timed]
            times = None if parts.ages is None else tuple(time for _, _, time in timed)
            return pieces, times
        comments = self._comments(language, [] if self._has_files else snippets, changes)
        if self.layout in _REPOSITORY_LAYOUTS:
            return self._repository_pieces(parts, comments + prefix, suffix, snippets), None
        return self._fim_pieces(comments + prefix, suffix), None

    @property
    def _has_files(self) -> bool:
        return self.layout in (*_REPOSITORY_LAYOUTS, "zen-coder")

    def _special(self, name: str) -> Piece:
        return (SPECIAL, self.tokens[name])

    def _header(self, repo: str, path: str, language: str) -> list[Piece]:
        return [
            self._special("repo"),
            (TEXT, repo),
            self._special("path"),
            (TEXT, path),
            self._special("lang"),
            (TEXT, language),
        ]

    def _zen_coder_pieces(
        self,
        parts: PromptParts,
        language: str | None,
        prefix: str,
        suffix: str | None,
        snippets: Sequence[Snippet],
        changes: Sequence[Change],
    ) -> list[tuple[bool, str, PieceTime]]:
        """The layout's pieces, each with its time (0 for all where the parts have no ages)."""
        repo, path = parts.repo or "", parts.path or ""
        ages = parts.ages or Ages((), 0)
        file_time = ages.header

        def header(file: str, file_language: str, time: int) -> list[tuple[bool, str, int]]:
            return [(*piece, time) for piece in self._header(repo, file, file_language)]

        pieces: list[tuple[bool, str, PieceTime]] = []
        if changes:
            ordered = sorted(changes, key=lambda c: c.time)
            start = max(0, ordered[0].time - 1)  # the file before its first change shown
            pieces += [(*self._special("history"), start), *header(path, language or "", start)]
            for change in ordered:
                pieces += [
                    (*self._special("change"), change.time),
                    (*self._special("message"), change.time),
                    (TEXT, change.message, change.time),
                    (*self._special("diff"), change.time),
                    (TEXT, change.diff, change.time),
                ]
        for snippet in _nearest_last(snippets):
            snippet_language = canonical_language(None, snippet.path) or ""
            opened, code = ages.snippets.get(snippet.path, (0, 0))
            pieces += header(snippet.path, snippet_language, opened)
            pieces += [(*self._special("after"), opened), (TEXT, snippet.text, code)]
        pieces += header(path, language or "", file_time)
        whole = parts.prefix + (parts.suffix or "")
        prefix_lines = line_count(parts.prefix)
        prefix_time = ages.code(whole, prefix_lines - line_count(prefix), prefix)
        if suffix is None:
            return [*pieces, (*self._special("after"), file_time), (TEXT, prefix, prefix_time)]
        # Suffix first (prepare trains both orders): typing only ever extends the prompt's
        # end, so every keystroke's prompt starts with the last one's, cached in the engine.
        return [
            *pieces,
            (*self._special("suffix"), file_time),
            (TEXT, suffix, ages.code(whole, parts.prefix.count("\n"), suffix)),
            (*self._special("prefix"), file_time),
            (TEXT, prefix, prefix_time),
            (*self._special("middle"), file_time),
        ]

    def _repository_pieces(
        self, parts: PromptParts, prefix: str, suffix: str | None, snippets: Sequence[Snippet]
    ) -> list[Piece]:
        """Qwen2.5-Coder's and StarCoder2's repository layouts: files after <file_sep>-like
        markers, each its path then its text; StarCoder2 puts the edited file's path after
        <fim_prefix>, Qwen after its own <|file_sep|>."""
        qwen = self.layout == "qwen"
        pieces: list[Piece] = []
        if parts.repo:
            pieces += [self._special("repo"), (TEXT, parts.repo + ("\n" if qwen else ""))]
        for snippet in _nearest_last(snippets):
            text = snippet.text + ("\n" if qwen and not snippet.text.endswith("\n") else "")
            pieces += [self._special("path"), (TEXT, f"{snippet.path}\n{text}")]
        if not pieces and parts.path is None:
            return self._fim_pieces(prefix, suffix)
        path_line = f"{parts.path or ''}\n"
        if suffix is None:
            return [*pieces, self._special("path"), (TEXT, path_line + prefix)]
        if qwen:
            pieces += [self._special("path"), (TEXT, path_line)]
            path_line = ""
        else:
            pieces.append(self._special("path"))
        return [
            *pieces,
            self._special("prefix"),
            (TEXT, path_line + prefix),
            self._special("suffix"),
            (TEXT, suffix),
            self._special("middle"),
        ]

    def _fim_pieces(self, prefix: str, suffix: str | None) -> list[Piece]:
        if suffix is None or self.layout == "plain":
            return [(TEXT, prefix)]
        marker = {name: self._marker(name) for name in ("prefix", "suffix", "middle")}
        if self.layout == "spm":
            return [*marker["suffix"], (TEXT, suffix), *marker["prefix"], (TEXT, prefix)]
        return [
            *marker["prefix"],
            (TEXT, prefix),
            *marker["suffix"],
            (TEXT, suffix),
            *marker["middle"],
        ]

    @property
    def suffix_first(self) -> bool:
        """Whether the suffix comes before the prefix (the zen-coder and Codestral layouts)."""
        return self.layout in (ZEN_CODER, "spm")

    def _marker(self, name: str) -> list[Piece]:
        """A fill-in-the-middle marker; Code Llama's SentencePiece pieces ("▁<PRE>") are
        written as text with their space ("<PRE> " opens the prefix, " <SUF>" and " <MID>")."""
        token = self.tokens[name]
        if not token.startswith(_SENTENCEPIECE_SPACE):
            return [(SPECIAL, token)]
        bare = token.removeprefix(_SENTENCEPIECE_SPACE)
        return (
            [(SPECIAL, bare), (TEXT, " ")] if name == "prefix" else [(TEXT, " "), (SPECIAL, bare)]
        )

    def _comments(
        self, language: str | None, snippets: Sequence[Snippet], changes: Sequence[Change]
    ) -> str:
        """Context as line comments for the top of the prefix (Tabby's "Path:" form): the
        layout has no place of its own for it."""
        mark = comment_prefix(language)
        blocks = []
        for change in sorted(changes, key=lambda c: c.time):
            subject = change.message.split("\n", 1)[0]
            blocks.append(f"Recent change {change.commit[:12]}: {subject}\n{change.diff}")
        blocks += [f"Path: {s.path}\n{s.text}" for s in _nearest_last(snippets)]
        lines = [line for block in blocks for line in block.rstrip("\n").split("\n")]
        return "".join(f"{mark}{line}\n" for line in lines)


def _nearest_last(snippets: Sequence[Snippet]) -> list[Snippet]:
    """Snippets from the lowest score to the highest, so the closest sits next to the code."""
    return sorted(snippets, key=lambda s: s.score)


class _Packer:
    """Fits a prompt into its budget: prefix and suffix up to their shares, then context into
    what is left, then what context left back to the prefix and the suffix."""

    def __init__(
        self, form: PromptFormat, parts: PromptParts, budget: Budget, count: Callable[[str], int]
    ) -> None:
        self.form, self.parts, self.budget = form, parts, budget
        self.count = functools.lru_cache(maxsize=256)(count)  # the same texts, counted often
        self.suffix_wanted = parts.suffix is not None and form.layout not in ("plain",)

    def size(self, pieces: Sequence[Piece]) -> int:
        """Tokens of `pieces`: one per special token, adjacent texts counted together."""
        total, text = 0, []
        for special, value in pieces:
            if special:
                total += 1 + (self.count("".join(text)) if text else 0)
                text = []
            else:
                text.append(value)
        return total + (self.count("".join(text)) if any(text) else 0)

    def render(self, prefix: str, suffix: str, snippets, changes) -> list[Piece]:
        return self.render_timed(prefix, suffix, snippets, changes)[0]

    def render_timed(
        self, prefix: str, suffix: str, snippets, changes
    ) -> tuple[list[Piece], tuple[PieceTime, ...] | None]:
        return self.form.pieces(
            self.parts, prefix, suffix if self.suffix_wanted else None, snippets, changes
        )

    def pack(self) -> Prompt:
        budget = self.budget
        overhead = self.size(self.render("", "", [], []))
        available = budget.tokens - overhead
        if available <= 0:
            raise ZenCoderError(
                f"a prompt budget of {budget.tokens} tokens leaves nothing for code after the "
                f"{overhead} tokens of the {self.form.name} layout; raise the budget"
            )
        suffix_text = self.parts.suffix or ""
        prefix = _tail(self.parts.prefix, math.floor(available * budget.prefix), self.count)
        suffix = (
            _head(suffix_text, math.floor(available * budget.suffix), self.count)
            if self.suffix_wanted
            else ""
        )
        room = available - self._text_tokens(prefix) - self._text_tokens(suffix)
        changes, snippets = self._context(room)
        prefix, suffix = self._share_out(prefix, suffix, snippets, changes)
        return self._within_budget(prefix, suffix, snippets, changes)

    def _share_out(
        self, prefix: str, suffix: str, snippets: list[Snippet], changes: list[Change]
    ) -> tuple[str, str]:
        """Give the tokens the context left to the prefix and the suffix in the ratio of their
        shares, and what one cannot take (it is whole already) to the other."""
        shares = self.budget.prefix + self.budget.suffix
        ratio = self.budget.prefix / shares if shares else 1.0

        def left() -> int:
            return self.budget.tokens - self.size(self.render(prefix, suffix, snippets, changes))

        if self.form.suffix_first:
            # The suffix opens the code: were its cut to take what the prefix leaves, it would
            # move with every key typed, and the prompt after it would be new each time.
            return self._grow_prefix(prefix, left()), suffix

        prefix = self._grow_prefix(prefix, math.floor(left() * ratio))
        suffix = self._grow_suffix(suffix, left())
        prefix = self._grow_prefix(prefix, left())
        return prefix, suffix

    def _grow_prefix(self, prefix: str, tokens: int) -> str:
        if tokens <= 0 or len(prefix) == len(self.parts.prefix):
            return prefix
        return _tail(self.parts.prefix, self._text_tokens(prefix) + tokens, self.count)

    def _grow_suffix(self, suffix: str, tokens: int) -> str:
        whole = self.parts.suffix or ""
        if tokens <= 0 or not self.suffix_wanted or len(suffix) == len(whole):
            return suffix
        return _head(whole, self._text_tokens(suffix) + tokens, self.count)

    def _text_tokens(self, text: str) -> int:
        return self.count(text) if text else 0

    def _context(self, room: int) -> tuple[list[Change], list[Snippet]]:
        """The changes (newest first, up to half the room) and the snippets (best first) whose
        rendering fits in `room` tokens, each measured by what it adds to the prompt."""
        empty = self.size(self.render("", "", [], []))
        changes: list[Change] = []
        for change in sorted(self.parts.changes, key=lambda c: -c.time):
            trial = [*changes, change]
            if self.size(self.render("", "", [], trial)) - empty <= room // 2:
                changes = trial
        snippets: list[Snippet] = []
        for snippet in sorted(self.parts.snippets, key=lambda s: -s.score):
            trial = [*snippets, snippet]
            if self.size(self.render("", "", trial, changes)) - empty <= room:
                snippets = trial
        return changes, snippets

    def _within_budget(self, prefix: str, suffix: str, snippets, changes) -> Prompt:
        """Pieces counted as a whole can exceed the sum of their parts where text merges across
        a join: drop prefix tokens (then context) until the whole fits."""
        while True:
            pieces, times = self.render_timed(prefix, suffix, snippets, changes)
            tokens = self.size(pieces)
            over = tokens - self.budget.tokens
            if over <= 0:
                return Prompt(tuple(pieces), tokens, list(snippets), list(changes), times)
            if prefix:
                prefix = _tail(prefix, max(0, self._text_tokens(prefix) - over), self.count)
            elif snippets:
                snippets = snippets[:-1]
            elif changes:
                changes = changes[:-1]
            elif suffix:
                suffix = _head(suffix, max(0, self._text_tokens(suffix) - over), self.count)
            else:
                raise ZenCoderError(
                    f"the {self.form.name} layout alone takes {tokens} tokens, more than the "
                    f"budget's {self.budget.tokens}; raise the budget"
                )


def _tail(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest end of `text` within `limit` tokens that starts on a line whose number is a
    multiple of STABLE_START_LINES; where none fits, the longest made of whole lines; where not
    even the last line fits, the longest end of that line."""
    if limit <= 0 or not text:
        return ""
    cut = max(0, len(text) - _window(text, limit, count, lambda size: text[-size:]))
    line = text.count("\n", 0, cut)  # the number of the line the window starts in
    starts = [] if cut else [(0, 0)]
    for index in range(cut, len(text)):
        if text[index] == "\n":
            line += 1
            starts.append((index + 1, line))

    def fits(start: int) -> bool:
        return count(text[start:]) <= limit

    for candidates in (
        [s for s, n in starts if n % STABLE_START_LINES == 0],
        [s for s, _ in starts],
    ):
        found = _first_fitting(candidates, fits)
        if found < len(candidates):
            return text[candidates[found] :]
    last = starts[-1][0] if starts else cut
    chars = list(range(last, len(text) + 1))
    return text[chars[_first_fitting(chars, fits)] :]


def _head(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest start of `text` within `limit` tokens made of whole lines, or, where not
    even the first line fits, the longest start of that line."""
    if limit <= 0 or not text:
        return ""
    text = text[: _window(text, limit, count, lambda size: text[:size])]
    ends = [i + 1 for i, c in enumerate(text) if c == "\n"]
    if not ends or ends[-1] != len(text):
        ends.append(len(text))
    line = _last_fitting(ends, lambda end: count(text[:end]) <= limit)
    if line >= 0:
        return text[: ends[line]]
    chars = list(range(ends[0] + 1))
    return text[: chars[_last_fitting(chars, lambda end: count(text[:end]) <= limit)]]


def _window(text: str, limit: int, count: Callable[[str], int], piece: Callable[[int], str]) -> int:
    """A number of characters from one end of `text` that holds more than `limit` tokens (or
    all of it), found by doubling from `limit` characters, so that cutting counts only about
    twice what it keeps, never the whole of a long file."""
    size = max(limit, 1)
    while size < len(text) and count(piece(size)) <= limit:
        size = min(2 * size, len(text))
    return size


def _first_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int:
    """The index of the first candidate that fits, where fitting is monotone (once a candidate
    fits, every later one does); len(candidates) if none does."""
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            high = middle
        else:
            low = middle + 1
    return low


def _last_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int:
    """The index of the last candidate that fits, where every earlier one fits too; -1 if none."""
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            low = middle + 1
        else:
            high = middle
    return low - 1
