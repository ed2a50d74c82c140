"""Repository context for completions: code retrieved from the user's checkout, the edited
file's recent history, and the repository's name and the file's time as the model learned them.

`RepositoryContext` indexes one checkout:

- Files: what git tracks plus untracked files it does not ignore, in a language mining knows.
- Chunks: each file cut at its top-level definitions (tree-sitter, through
  tree-sitter-language-pack's grammars), consecutive small ones joined and large ones cut at
  their inner definitions, then at lines, so that no chunk exceeds `chunk_chars`.
- Retrieval: BM25 (tantivy, in memory) over identifier words (`parseConfig`, `parse_config` ->
  parse, config), queried with the lines around the cursor; the edited file's own chunks are
  left out, since the prompt holds its code already.
- Refresh: files whose size and modification time are unchanged are not read again, and a file
  read again is re-chunked only if its content changed; its old chunks are deleted from the
  index and its new ones added, so a refresh costs what changed, not the repository's size.
  (bm25s, tried first, has no updates: its score matrix is rebuilt whole on every change,
  tens of milliseconds for attrs' 1,100 chunks and growing with the repository.)
- History: one `git log --raw` walk through the miner's own reader (`history.gitio.LogStream`)
  and counter (`history.walk.positioned`), so each file's history position is the one `zen-coder
  mine` gives it; a later refresh walks only the new commits when HEAD moved forward along one
  line. Every change of each file is kept (commit, blob ids, position; renames carry a file's
  along) and the diffs of its last ones made on demand with mining's normalization and diff
  (`history.extract.normalize`, `history.diff.unified_diff`).
- Ages: the time channel of the edited file's lines as `prepare` gives them (`zen_coder.data.blame`
  along the file's changes: a line keeps the position of the change that last touched it, lines
  from before the walk's first change of the file its position - 1), kept per file and carried
  through only the new changes when HEAD moves on; the lines of the editor's text are matched
  to those of that version by xdiff, and a line it does not hold (typed, unsaved) gets the
  file's position + 1, the time of the commit that would make it: the same at every keystroke,
  so the engine keeps reusing the prompt's start.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tantivy

from zen_coder.data.blame import Times, record_times, successor, unknown_time
from zen_coder.data.pack import TIME_MAX
from zen_coder.errors import ZenCoderError
from zen_coder.history.config import MineConfig
from zen_coder.history.diff import unified_diff
from zen_coder.history.extract import normalize
from zen_coder.history.gitio import ZERO_OID, BlobReader, LogStream, RawChange, git
from zen_coder.history.languages import PYGMENTS_ALIASES, detect_language, needs_first_line
from zen_coder.history.secrets import redact
from zen_coder.history.sources import RepoSpec, local_git_dir, shallow_boundary
from zen_coder.history.walk import HistoryPositions, positioned
from zen_coder.inference.prompts import Ages, Budget, Change, PromptParts, Snippet

log = logging.getLogger(__name__)

# Grammar names in tree-sitter-language-pack of the languages mining names: Pygments' names for
# them (the lexers mining uses), but for Dockerfile's.
_GRAMMARS = {
    language: {"docker": "dockerfile"}.get(alias, alias)
    for language, alias in PYGMENTS_ALIASES.items()
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_SUBWORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Lines around the cursor that make the retrieval query: what is being written and what follows.
QUERY_PREFIX_LINES = 40
QUERY_SUFFIX_LINES = 20
# Characters of retrieved code per token of the budget's context share: code runs at three to
# four characters a token; the prompt format's packing drops what does not fit.
CONTEXT_CHARS_PER_TOKEN = 3
# Changes made into diffs kept for the next request (a commit's diff never changes).
MADE_CHANGES = 4096
_MISSING = object()
# Retrieval asks the index for one hit per this many characters of the limit.
MIN_CHUNK_CHARS = 64
# Files whose line ages are kept for the next request.
AGED_FILES = 256


def words(text: str) -> list[str]:
    """BM25 terms of code: each identifier lower-cased, and its camelCase and snake_case parts
    where it has more than one, so `parseConfig` meets `parse_config`."""
    terms = []
    for word in _WORD.findall(text):
        lower = word.lower()
        terms.append(lower)
        parts = _SUBWORD.findall(word)
        if len(parts) > 1:
            terms += [part.lower() for part in parts]
    return terms


@dataclass(frozen=True)
class Chunk:
    """A piece of a file: lines [start, end) (0-based) and their text."""

    path: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class RefreshStats:
    """What one refresh did: files indexed, files (re)chunked and dropped, chunks in the index,
    new commits walked, and its wall time."""

    files: int
    chunked: int
    removed: int
    chunks: int
    commits: int
    seconds: float


@dataclass
class _File:
    stat: tuple[int, int]  # (size, mtime_ns)
    digest: str
    chunks: list[Chunk]
    terms: list[list[str]]


@dataclass(frozen=True)
class _Recent:
    """One change of a file as the walk saw it."""

    commit: str
    message: bytes
    change: RawChange
    position: int


class _SearchIndex:
    """BM25 over chunks' words in a tantivy index in memory, updated file by file."""

    # Hits asked for per query beyond what fits: the edited file's and the prompt's own chunks
    # are skipped after the search.
    EXTRA_HITS = 32

    def __init__(self) -> None:
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("path", stored=False, tokenizer_name="raw")
        builder.add_text_field("words", stored=False, tokenizer_name="whitespace")
        builder.add_unsigned_field("chunk", stored=True, indexed=False)
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema)
        self.writer = self.index.writer(heap_size=32_000_000, num_threads=1)
        self.chunks: dict[int, Chunk] = {}  # by id; replaced whole, so readers see one state
        self._ids = itertools.count()

    def update(self, removed: Iterable[str], added: dict[str, _File]) -> None:
        """Drop the chunks of `removed` and of the files in `added`, then index `added`'s."""
        chunks = dict(self.chunks)
        for path in [*removed, *added]:
            self.writer.delete_documents_by_term("path", path)
        for number in [
            n for n, chunk in chunks.items() if chunk.path in added or chunk.path in removed
        ]:
            del chunks[number]
        for path, entry in added.items():
            for chunk, terms in zip(entry.chunks, entry.terms, strict=True):
                number = next(self._ids)
                chunks[number] = chunk
                document = tantivy.Document(path=path, words=" ".join(terms), chunk=number)
                self.writer.add_document(document)
        self.writer.commit()
        self.index.reload()
        self.chunks = chunks

    def search(self, terms: list[str], limit: int) -> Iterator[tuple[Chunk, float]]:
        """Chunks by BM25 score for `terms`, best first, at most `limit` plus EXTRA_HITS."""
        chunks = self.chunks
        query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "words", term))
                for term in dict.fromkeys(terms)
            ]
        )
        searcher = self.index.searcher()
        for score, address in searcher.search(query, limit + self.EXTRA_HITS).hits:
            number = searcher.doc(address)["chunk"][0]
            if number in chunks:
                yield chunks[number], score


class Chunker:
    """Cuts files into chunks of at most `max_chars` at syntax boundaries.

    Spans are lines [start, end); `ends[i]` is the character offset after line i, so a span's
    size is one subtraction.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._parsers: dict[str, object | None] = {}

    def chunks(self, path: str, text: str, language: str | None) -> list[Chunk]:
        lines = text.splitlines(keepends=True)
        if not lines:
            return []
        offsets = [0, *itertools.accumulate(len(line) for line in lines)]
        tree = self._parse(language, path, text)
        spans = (
            self._split(tree.root_node, 0, len(lines), offsets)
            if tree is not None
            else self._by_lines(0, len(lines), offsets)
        )
        chunks = []
        for start, end in self._joined(spans, offsets):
            piece = "".join(lines[start:end])[: self.max_chars]  # a line longer than a chunk
            if piece.strip():
                chunks.append(Chunk(path, start, end, piece))
        return chunks

    def _parse(self, language: str | None, path: str, text: str):
        grammar = _GRAMMARS.get(language or "")
        if grammar == "typescript" and path.endswith(".tsx"):
            grammar = "tsx"
        if grammar is None:
            return None
        if grammar not in self._parsers:
            self._parsers[grammar] = _parser(grammar)
        parser = self._parsers[grammar]
        return None if parser is None else parser.parse(text.encode())

    def _fits(self, start: int, end: int, offsets: list[int]) -> bool:
        return offsets[end] - offsets[start] <= self.max_chars

    def _split(self, node, start: int, end: int, offsets: list[int]) -> list[tuple[int, int]]:
        """Line spans covering [start, end) of `node`: one per named child, each extended back
        to the end of the one before (comments, decorators and blank lines go with what
        follows), split further, at the child's own children, where one is too long."""
        if self._fits(start, end, offsets):
            return [(start, end)]
        children = [
            child
            for child in node.named_children
            if child.end_point[0] >= start and child.start_point[0] < end
        ]
        if len(children) == 1 and children[0].named_child_count:
            return self._split(children[0], start, end, offsets)
        if len(children) < 2:
            return self._by_lines(start, end, offsets)
        spans = []  # (start, end, the child that starts it); children sharing a line share one
        cut, owner = start, children[0]
        for child in children[1:]:
            child_start = max(cut, min(child.start_point[0], end))
            if child_start > cut:
                spans.append((cut, child_start, owner))
                cut, owner = child_start, child
        spans.append((cut, end, owner))
        result = []
        for span_start, span_end, child in spans:
            if self._fits(span_start, span_end, offsets):
                result.append((span_start, span_end))
            elif span_end - span_start > 1 and child.named_child_count:
                result += self._split(child, span_start, span_end, offsets)
            else:
                result += self._by_lines(span_start, span_end, offsets)
        return result

    def _by_lines(self, start: int, end: int, offsets: list[int]) -> list[tuple[int, int]]:
        """Consecutive lines up to the size; a longer line is a span of its own."""
        spans, first = [], start
        for index in range(start + 1, end):
            if not self._fits(first, index + 1, offsets):
                spans.append((first, index))
                first = index
        spans.append((first, end))
        return spans

    def _joined(self, spans: list[tuple[int, int]], offsets: list[int]) -> list[tuple[int, int]]:
        """Neighbouring spans joined while they fit together (many small definitions)."""
        joined: list[tuple[int, int]] = []
        for start, end in spans:
            if start >= end:
                continue
            if joined and self._fits(joined[-1][0], end, offsets):
                joined[-1] = (joined[-1][0], end)
            else:
                joined.append((start, end))
        return joined


def _parser(grammar: str):
    """tree-sitter's parser for `grammar`, None where the pack has none (chunks then follow
    lines)."""
    from tree_sitter_language_pack import get_parser

    try:
        return get_parser(grammar)
    except (LookupError, ValueError, RuntimeError, OSError):
        return None


class RepositoryContext:
    """One repository checkout as context for completions in it (see the module docstring).

    `name` overrides the repository name; `known_repos` (a model's repos.json) lets
    `repo_name` pick the name the model was trained with among those mining could have given.
    Safe to query from several threads while one refreshes.
    """

    def __init__(
        self,
        root: Path,
        *,
        name: str | None = None,
        known_repos: Sequence[str] | None = None,
        chunk_chars: int = 1024,
        max_file_bytes: int = 1 << 20,
    ) -> None:
        self.root = Path(root)
        self.git_dir = local_git_dir(self.root, "the root of a git checkout")
        self.name = name
        self.known_repos = list(known_repos or ())
        self.chunker = Chunker(chunk_chars)
        self.max_file_bytes = max_file_bytes
        self._files: dict[str, _File] = {}
        self._index = _SearchIndex()
        self._positions = HistoryPositions()
        self._recent: dict[str, deque[_Recent]] = {}
        self._walked: str | None = None  # the commit the history walk reached
        self._made: dict[_Recent, Change | None] = {}  # changes made into diffs, kept
        # Line ages by path: the last change they follow, its version's normalized text and times.
        self._aged: dict[str, tuple[_Recent, str, Times]] = {}
        self._lock = threading.Lock()  # guards the fields queries read
        self._refreshing = threading.Lock()
        self._blobs = BlobReader(self.git_dir)
        self._blob_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def watch(self, interval: float) -> None:
        """Refresh now and then every `interval` seconds in a background thread until
        `close()`: a server answers from the start (without context until the first refresh
        ends) and keeps its index as fresh as the editor's files."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(
            target=self._watch, args=(interval,), name="repository-refresh", daemon=True
        )
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        while True:
            try:
                self.refresh()
            except ZenCoderError as error:  # a rebase or checkout under way: try again later
                log.warning("repository refresh failed: %s", error)
            if self._stop.wait(interval):
                return

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._blob_lock:
            self._blobs.close()

    # -- refresh -----------------------------------------------------------------------------

    def refresh(self) -> RefreshStats:
        """Bring the index and the history up to the checkout: only files that changed are
        read and chunked again, only new commits walked."""
        with self._refreshing:
            started = time.perf_counter()
            commits = self._walk_history()
            files, chunked, removed = self._refresh_files()
            return RefreshStats(
                len(files),
                chunked,
                removed,
                len(self._index.chunks),
                commits,
                time.perf_counter() - started,
            )

    def _refresh_files(self) -> tuple[dict[str, _File], int, int]:
        old = self._files
        files: dict[str, _File] = {}
        rechunked: dict[str, _File] = {}
        for path in self._listed_files():
            entry, chunked = self._file_entry(path, old.get(path))
            if entry is not None:
                files[path] = entry
            if chunked:
                rechunked[path] = entry
        removed = old.keys() - files.keys()
        if rechunked or removed:
            self._index.update(removed, rechunked)
        self._files = files
        return files, len(rechunked), len(removed)

    def _listed_files(self) -> list[str]:
        listing = ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(
            ["git", "-C", str(self.root), *listing],
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise ZenCoderError(f"{self.root}: git ls-files failed; is it a git checkout?")
        paths = out.stdout.decode("utf-8", errors="surrogateescape").split("\0")
        return sorted({path for path in paths if path})

    def _file_entry(self, path: str, previous: _File | None) -> tuple[_File | None, bool]:
        """The file's index entry (None for what is not indexed) and whether it was chunked:
        the previous entry where size and modification time agree, or the content does."""
        full = self.root / path
        try:
            info = full.lstat()
        except OSError:
            return None, False  # deleted in the work tree
        if not full.is_file() or full.is_symlink() or info.st_size > self.max_file_bytes:
            return None, False
        stat = (info.st_size, info.st_mtime_ns)
        if previous is not None and previous.stat == stat:
            return previous, False
        data = full.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if previous is not None and previous.digest == digest:
            return _File(stat, digest, previous.chunks, previous.terms), False
        text = _text(data)
        language = _language(path, text)
        if text is None or language is None:
            return None, False
        chunks = self.chunker.chunks(path, text, language)
        terms = [words(f"{path}\n{chunk.text}") for chunk in chunks]
        return _File(stat, digest, chunks, terms), True

    def _walk_history(self) -> int:
        """Walk the commits since the last walk (all of them the first time, or when HEAD did
        not move forward along one line of commits) and count positions as mining does."""
        head = _head(self.git_dir)
        if head is None or head == self._walked:
            return 0
        if self._walked is not None and _linear_since(self.git_dir, self._walked, head):
            # Copies: queries keep reading the old state until the new one is complete.
            positions = HistoryPositions()
            positions.counts = dict(self._positions.counts)
            recent = {path: deque(kept) for path, kept in self._recent.items()}
            revision = f"{self._walked}..{head}"
        else:
            positions, recent = HistoryPositions(), {}
            revision = head
        limit = 4 * MineConfig().max_files_per_commit
        stream = LogStream(self.git_dir, revision, rename_limit=limit)
        walked = 0
        try:
            boundary = shallow_boundary(self.git_dir)
            for commit, commit_positions in positioned(stream, boundary, positions):
                walked += 1
                for change, position in zip(commit.changes, commit_positions, strict=True):
                    self._remember(recent, commit.sha, commit.message, change, position)
        finally:
            stream.close()
        with self._lock:
            self._positions, self._recent, self._walked = positions, recent, head
        return walked

    def _remember(
        self,
        recent: dict[str, deque[_Recent]],
        sha: str,
        message: bytes,
        change: RawChange,
        position: int,
    ) -> None:
        """Keep the change among its file's; a rename carries the file's along."""
        carried = recent.pop(change.old_path, None) if change.status == "R" else None
        changes = carried if carried is not None else recent.get(change.path)
        changes = changes if changes is not None else deque()
        changes.append(_Recent(sha, message, change, position))
        recent[change.path] = changes

    # -- queries -----------------------------------------------------------------------------

    def relative_path(self, path: str | None) -> str | None:
        """`path` as the index names files (relative to the root, with "/"), for a path an
        editor sends: absolute, or relative already. A path outside the checkout stays as it
        is."""
        if not path:
            return path
        full = Path(path)
        if not full.is_absolute():
            return full.as_posix()
        try:
            return full.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path

    def prompt_parts(
        self,
        prefix: str,
        suffix: str | None,
        path: str | None,
        language: str | None,
        budget: Budget,
        history: int = 4,
        snippets: Sequence[Snippet] = (),
    ) -> PromptParts:
        """A request's parts with this repository's context: its name, `snippets` (the
        client's) and the snippets nearest the cursor, sized for the budget's context share,
        the file's last `history` changes (the prompt format packs what fits), and the ages of
        the lines (`ages`)."""
        path = self.relative_path(path)
        limit = int(budget.tokens * budget.context * CONTEXT_CHARS_PER_TOKEN)
        found = [*snippets, *self.snippets(path, prefix, suffix or "", limit)]
        return PromptParts(
            prefix,
            suffix,
            path,
            language,
            self.repo_name(),
            found,
            self.changes(path, history) if path and history > 0 else [],
            self.ages(path, prefix + (suffix or ""), found) if path else None,
        )

    def ages(self, path: str, text: str, snippets: Sequence[Snippet] = ()) -> Ages:
        """The times of the lines of `text`, the editor's content of `path`, as `prepare`
        gives a version's lines (see the module docstring), and of the snippets' files: their
        position for the header, their lines' unknown-origin time for the code (not blamed:
        a file's first request would pay the walk of its history)."""
        position = self._position(path)
        typed = min(position + 1, TIME_MAX)
        committed, times = self._head_ages(path)
        comparable = _comparable(text)
        lines = successor(committed, times, comparable, typed)
        header = position if comparable == committed else typed
        others = {
            snippet.path: (self._position(snippet.path), self._unknown(snippet.path))
            for snippet in snippets
        }
        return Ages(tuple(min(time, TIME_MAX) for time in lines), header, others)

    def _position(self, path: str) -> int:
        with self._lock:
            return min(self._positions.counts.get(path, 0), TIME_MAX)

    def _unknown(self, path: str) -> int:
        """The time of a line of `path` whose last change the walk did not see."""
        with self._lock:
            changes = self._recent.get(path)
            first = changes[0].position if changes else 0
        return min(unknown_time(first), TIME_MAX)

    def _head_ages(self, path: str) -> tuple[str, Times]:
        """The newest walked version of `path` (normalized as mining stores it) and its line
        ages; ("", ()) for a file the walk never saw. Kept per file with the change they follow:
        when HEAD moves on, only the file's new changes are followed (a change names a commit,
        which names its whole history, so ages kept for one are right wherever it appears)."""
        with self._lock:
            changes = tuple(self._recent.get(path, ()))
            cached = self._aged.get(path)
        if not changes:
            return "", ()
        start, text, times = 0, "", ()
        if cached is not None and cached[0] in changes:
            last, text, times = cached
            start = changes.index(last) + 1
        if start < len(changes):
            text, times = self._blame(changes[start:], text, times)
            with self._lock:
                if len(self._aged) >= AGED_FILES:
                    self._aged.clear()
                self._aged[path] = (changes[-1], text, times)
        return text, times

    def _blame(self, changes: Sequence[_Recent], text: str, times: Times) -> tuple[str, Times]:
        """Line ages along a file's changes, oldest first, from the version `text` with
        `times` before them, as `zen_coder.data.blame.FileBlame` follows a file's mined
        records: each version's lines through xdiff from the one before; a version in between
        that the walk did not show (a side branch) through xdiff too."""
        oids = _blob_ids(changes)
        with self._blob_lock:
            contents = self._blobs.contents(oids)
        versions = {oid: _version(oid, contents) for oid in oids}  # most are two changes'
        for entry in changes:
            old = versions.get(entry.change.old_oid)
            new = versions.get(entry.change.new_oid)
            position = entry.position
            before = None
            if old and times:
                before = successor(text, times, old, unknown_time(position))
            after = record_times({"history_position": position}, old, new, before).after
            text, times = new or "", after
        return text, times

    def snippets(
        self, path: str | None, prefix: str, suffix: str, limit_chars: int
    ) -> list[Snippet]:
        """The chunks of other files nearest (BM25) to the lines around the cursor, best
        first, as many as fit in `limit_chars`; none that the prompt's code already holds.

        The query leaves out the line being typed: the snippets, which open the prompt, then
        stay the same for every keystroke of a line, and the engine reuses the prompt's cached
        start instead of computing it again."""
        finished = prefix[: prefix.rfind("\n") + 1]
        near = finished.splitlines()[-QUERY_PREFIX_LINES:]
        near += suffix.splitlines()[:QUERY_SUFFIX_LINES]
        query = words("\n".join(near))
        if not query or limit_chars <= 0:
            return []
        found: list[Snippet] = []
        left = limit_chars
        for chunk, score in self._index.search(query, limit_chars // MIN_CHUNK_CHARS + 1):
            if left < MIN_CHUNK_CHARS:
                break
            if chunk.path == path or len(chunk.text) > left or chunk.text in prefix + suffix:
                continue
            found.append(Snippet(chunk.path, chunk.text, score))
            left -= len(chunk.text)
        return found

    def changes(self, path: str, limit: int) -> list[Change]:
        """The file's last `limit` committed changes, newest first, each as mining records it:
        its message (redacted) and the diff of the normalized versions, with its history
        position. Binary versions are left out."""
        with self._lock:
            recent = list(self._recent.get(path, ()))[-limit:] if limit > 0 else []
        made = {entry: self._made.get(entry, _MISSING) for entry in recent}
        wanted = [entry for entry, change in made.items() if change is _MISSING]
        oids = _blob_ids(wanted)
        with self._blob_lock:
            contents = self._blobs.contents(oids) if oids else {}
        for entry in wanted:
            made[entry] = _as_change(entry, contents)
        with self._lock:
            if len(self._made) > MADE_CHANGES:
                self._made.clear()
            self._made.update(made)
        return [change for entry in reversed(recent) if (change := made[entry]) is not None]

    def repo_name(self) -> str:
        """The name `zen-coder mine` gives this repository: its clone URL's `owner/name` when
        mined from a remote, the directory's name when mined from the path. With the model's
        repository table, the first of those the model knows; without, the remote's."""
        if self.name:
            return self.name
        candidates = [*_remote_names(self.git_dir), RepoSpec(str(self.root)).display_name()]
        known = set(self.known_repos)
        return next((name for name in candidates if name in known), candidates[0])

    def time_of(self, path: str) -> int:
        """The file's history position as mining counts it (its number of changes, renames
        followed), plus one while the work tree holds an uncommitted change of it: the model
        saw each version of a file at the position of the change that made it."""
        with self._lock:
            position = self._positions.counts.get(path, 0)
            recent = self._recent.get(path)
        committed = recent[-1].change.new_oid if recent else None
        full = self.root / path
        try:
            data = full.read_bytes()
        except OSError:
            return min(position, TIME_MAX)
        edited = _blob_id(data) != committed
        return min(position + int(edited), TIME_MAX)


def _as_change(entry: _Recent, contents: dict[str, bytes | None]) -> Change | None:
    change = entry.change
    old = None if change.old_oid == ZERO_OID else _text(contents.get(change.old_oid))
    new = None if change.new_oid == ZERO_OID else _text(contents.get(change.new_oid))
    unreadable = (change.old_oid != ZERO_OID and old is None) or (
        change.new_oid != ZERO_OID and new is None
    )
    if unreadable:
        return None
    old_text = None if old is None else normalize(old)
    new_text = None if new is None else normalize(new)
    diff, _, _ = unified_diff(old_text, new_text, change.old_path or change.path, change.path)
    message, _ = redact(entry.message.decode("utf-8", errors="replace").rstrip())
    return Change(entry.commit, message, diff, entry.position)


def _version(oid: str, contents: dict[str, bytes | None]) -> str | None:
    """A blob's text as mining stores it (normalized); None for binary or undecodable."""
    text = _text(contents.get(oid))
    return None if text is None else normalize(text)


def _comparable(text: str) -> str:
    """An editor's text with its lines as mining normalizes them (no trailing blanks or
    carriage returns), its number of lines kept, so that xdiff matches them to a version's."""
    if "\r" not in text and " \n" not in text and "\t\n" not in text:
        return text
    return "\n".join(line.rstrip(" \t\r") for line in text.split("\n"))


def _text(data: bytes | None) -> str | None:
    """UTF-8 text, None for binary (a NUL byte) or undecodable content."""
    if data is None or b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _language(path: str, text: str | None) -> str | None:
    if text is None:
        return None
    first_line = text.split("\n", 1)[0] if needs_first_line(path) else None
    return detect_language(path, first_line)


def _blob_id(data: bytes) -> str:
    """The id git gives `data` as a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _head(git_dir: Path) -> str | None:
    found = git(git_dir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    return found.stdout.decode().strip() if found.returncode == 0 else None


def _linear_since(git_dir: Path, old: str, new: str) -> bool:
    """Whether `new` descends from `old` through commits of one parent each: then walking
    old..new after old's walk counts what a whole walk of `new` counts."""
    if git(git_dir, "merge-base", "--is-ancestor", old, new, check=False).returncode != 0:
        return False
    merges = git(git_dir, "rev-list", "--min-parents=2", "--count", f"{old}..{new}").stdout
    return int(merges) == 0


def _remote_names(git_dir: Path) -> Iterable[str]:
    """The names mining gives the clone URLs of the remotes, origin first."""
    listed = git(git_dir, "remote", check=False).stdout.decode().split()
    for remote in sorted(listed, key=lambda name: name != "origin"):
        url = git(git_dir, "remote", "get-url", remote, check=False).stdout.decode().strip()
        if url:
            yield RepoSpec(url).display_name()


def _blob_ids(entries: Sequence[_Recent]) -> list[str]:
    """The versions (blob ids) `entries`' changes go from and to, sorted, none twice."""
    return sorted(
        {
            oid
            for entry in entries
            for oid in (entry.change.old_oid, entry.change.new_oid)
            if oid != ZERO_OID
        }
    )
