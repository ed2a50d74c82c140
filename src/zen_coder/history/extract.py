"""Turn a batch of commits into records: the part of mining that runs in parallel.

A batch is a run of consecutive commits of one repository, already filtered at commit level by the
walk. For each changed file the extractor decides, cheapest test first, whether to keep it: path
rules, then blob sizes (one `cat-file --batch-check` round trip for the whole batch, so an oversized
blob is never read), then contents (read in groups bounded by bytes), then content rules, then
redaction, normalization and the diff. Decoded, redacted and normalized texts are cached by blob id:
a file's old content is usually the new content of its previous change, often in the same batch.

The batch's shard, dedup keys and ledger are written to staging; the ledger goes last.
"""

from __future__ import annotations

import atexit
import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zen_coder.files import write_json_atomic
from zen_coder.history import arrays, edits, filters, languages
from zen_coder.history.config import MineConfig
from zen_coder.history.diff import changed_lines, unified_diff
from zen_coder.history.formatting import is_formatting_only
from zen_coder.history.gitio import MODE_GITLINK, MODE_SYMLINK, ZERO_OID, BlobReader, RawChange
from zen_coder.history.minhash import MinHasher
from zen_coder.history.secrets import redact, redact_edit
from zen_coder.history.shards import KEYS_SCHEMA, RECORD_SCHEMA, write_parquet_atomic
from zen_coder.history.store import DatasetDir
from zen_coder.history.walk import BatchJob, CommitJob

CHANGE_TYPES = {"A": "add", "M": "modify", "T": "modify", "D": "delete", "R": "rename"}
GROUP_BYTES = 64 << 20
CACHE_CHARS = 64 << 20


@dataclass(slots=True)
class Blob:
    """A blob's text and what was done to it; `clean` is redacted and normalized."""

    size: int
    text: str | None = None
    problem: str | None = None  # binary, undecodable or missing_object
    generated: bool | None = None
    minified: bool | None = None
    clean: str | None = None
    tidy: bool = False  # normalizing changed nothing: `clean` is the redacted text
    digest: bytes = b""
    redactions: dict[str, int] = field(default_factory=dict)


@dataclass
class Counts:
    commits: Counter = field(default_factory=Counter)
    files: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    redactions: Counter = field(default_factory=Counter)
    changes_seen: int = 0
    records: int = 0
    code_bytes: int = 0


def normalize(text: str) -> str:
    """LF line endings, no trailing whitespace, exactly one final newline (none if empty)."""
    if text.startswith("\ufeff"):
        text = text.lstrip("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    if text.endswith("\n") and not text.endswith("\n\n") and text != "\n":
        return text  # the usual case: nothing to copy
    text = text.rstrip("\n")
    return text + "\n" if text else ""


def normalize_edit(old: str, new: str) -> str:
    """`normalize(new)`, given that `normalize(old)` changed nothing, from the lines that differ.

    The lines `new` shares with `old` have no carriage return and no trailing whitespace, so only
    the changed lines and the ends of the text can need work; if they do, all of it is normalized.
    """
    start, _, end = edits.differing_lines(old, new)
    changed = new[start:end]
    if (
        "\r" in changed
        or " \n" in changed
        or "\t\n" in changed
        or new.startswith("\ufeff")
        or not new.endswith("\n")
        or new.endswith("\n\n")
        or new == "\n"
    ):
        return normalize(new)
    return new


def clean_version(blob: Blob, previous: Blob | None, config: MineConfig) -> None:
    """Set the blob's `clean` text (redacted, normalized), `redactions` and `tidy`.

    `previous` is the file's version before this one. Once it is cleaned, only the lines this
    change touched are searched for secrets and normalized: the lines it shares with `previous`
    are redacted as they were there, which takes `previous`'s redacted text (its raw text when it
    had nothing to redact, its clean text when normalizing changed nothing, `tidy`), and have
    nothing to normalize, as `previous.clean` has not.
    """
    text = blob.text
    cleaned_before = previous is not None and previous.clean is not None
    if config.redact_secrets or config.redact_emails:
        flags = {"secrets": config.redact_secrets, "emails": config.redact_emails}
        if cleaned_before and not previous.redactions:
            text, blob.redactions = redact_edit(previous.text, text, **flags)
        elif cleaned_before and previous.tidy:
            redacted = (previous.clean, previous.redactions)
            text, blob.redactions = redact_edit(previous.text, text, redacted, **flags)
        else:
            text, blob.redactions = redact(text, **flags)
    if config.normalize_code:
        # `previous.clean` is normalized, as normalize_edit needs; normalizing returns the very
        # text it was given when it has nothing to change.
        normalized = normalize_edit(previous.clean, text) if cleaned_before else normalize(text)
        blob.tidy = normalized is text
        text = normalized
    else:
        blob.tidy = True
    blob.clean = text


class EarlierHashes:
    """Content hashes of the records that come before a batch: final ones, earlier staged shards.

    Dedup decides on the whole dataset when a run ends, and rewriting a shard to drop a duplicate
    costs a decompression and a compression. Most duplicates repeat something mined long before
    (a copied file, a cherry-pick), so a worker drops them itself, against the shards complete when
    its batch starts; the final pass then only finds the rest and decides the same way.
    """

    def __init__(self, run: str) -> None:
        self.run = run
        self.sorted = np.zeros(0, dtype=np.uint64)
        self.loaded: set[Path] = set()

    def refresh(self, store: DatasetDir, rank: tuple[int, int], ranks: dict[str, int]) -> None:
        paths = [p for p in store.keys.glob("*/*.parquet") if p not in self.loaded]
        for ledger in store.staging.glob("*/*.json"):
            index = int(ledger.name.partition("-")[0])
            shard_rank = (ranks.get(ledger.parent.name, len(ranks)), index)
            keys = ledger.with_name(ledger.name.removesuffix(".json") + ".keys.parquet")
            if shard_rank < rank and keys not in self.loaded and keys.exists():
                paths.append(keys)
        found = [self.sorted]
        for path in paths:
            try:
                hashes = arrays.read_table(path, ["content_hash"])["content_hash"]
                found.append(arrays.to_numpy(hashes, np.uint64))
            except OSError:  # finalized since it was listed; its final copy is found next time
                continue
            self.loaded.add(path)
        if len(found) > 1:
            self.sorted = np.sort(np.concatenate(found))

    def __contains__(self, content_hash: int) -> bool:
        position = np.searchsorted(self.sorted, np.uint64(content_hash))
        return position < len(self.sorted) and self.sorted[position] == content_hash


class _Worker:
    """Per-process state: open blob readers, the text cache, MinHashers, earlier hashes."""

    def __init__(self) -> None:
        self.readers: OrderedDict[str, BlobReader] = OrderedDict()
        self.cache: OrderedDict[tuple, Blob] = OrderedDict()
        self.cache_chars = 0
        self.hashers: dict[tuple, MinHasher] = {}
        self.earlier: EarlierHashes | None = None

    def earlier_hashes(self, job: BatchJob, store: DatasetDir) -> EarlierHashes:
        if self.earlier is None or self.earlier.run != job.run:
            self.earlier = EarlierHashes(job.run)
        rank = (job.repo_ranks.get(job.repo_key, len(job.repo_ranks)), job.index)
        self.earlier.refresh(store, rank, job.repo_ranks)
        return self.earlier

    def reader(self, git_dir: str) -> BlobReader:
        if git_dir not in self.readers:
            if len(self.readers) >= 4:
                self.readers.popitem(last=False)[1].close()
            self.readers[git_dir] = BlobReader(git_dir)
        self.readers.move_to_end(git_dir)
        return self.readers[git_dir]

    def hasher(self, config: MineConfig) -> MinHasher:
        key = (config.minhash_permutations, config.shingle_size, config.near_dup_threshold)
        if key not in self.hashers:
            self.hashers[key] = MinHasher(*key)
        return self.hashers[key]

    def cached(self, key: tuple) -> Blob | None:
        blob = self.cache.get(key)
        if blob is not None:
            self.cache.move_to_end(key)
        return blob

    def remember(self, key: tuple, blob: Blob) -> None:
        self.cache[key] = blob
        self.cache_chars += len(blob.text or "") + len(blob.clean or "")
        while self.cache_chars > CACHE_CHARS and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.cache_chars -= len(old.text or "") + len(old.clean or "")

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


_WORKER = _Worker()
atexit.register(_WORKER.close)  # end the cat-file processes with their pipes closed


@dataclass(slots=True)
class _Candidate:
    change: RawChange
    position: int
    language: str | None  # None until the first line (a shebang) has been read


class _Batch:
    def __init__(self, job: BatchJob) -> None:
        self.job = job
        self.config = job.config
        self.reader = _WORKER.reader(job.git_dir)
        self.counts = Counts()
        self.columns: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
        self.hashes: list[int] = []
        self.bands: list[bytes] = []
        self.blobs: dict[str, Blob] = {}
        self.seen: set[int] = set()
        self.earlier = (
            _WORKER.earlier_hashes(job, DatasetDir(Path(job.out)))
            if job.config.dedup_exact
            else None
        )
        config = job.config
        # Everything a cached blob's verdicts and cleaned text depend on.
        self.key_suffix = (
            config.redact_secrets,
            config.redact_emails,
            config.normalize_code,
            config.drop_binary,
            config.minified_mean_line_chars,
        )

    # -- path-level rules: decided before any blob is read ------------------------------------
    def path_reason(self, change: RawChange) -> str | None:
        config = self.config
        modes = (change.old_mode, change.new_mode)
        if MODE_GITLINK in modes:
            return "submodule"
        if MODE_SYMLINK in modes:
            return "symlink"
        for path in (change.path, change.old_path):
            if path is not None and not path.isascii():
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    return "undecodable"
        if change.status in ("M", "T") and change.old_oid == change.new_oid:
            return "no_content_change"
        path = change.path
        if config.drop_vendored and filters.is_vendored(path):
            return "vendored"
        if config.drop_lockfiles and filters.is_lockfile(path):
            return "lockfile"
        if config.drop_generated_files and filters.is_generated_path(path):
            return "generated"
        return None

    def plan(self, commit: CommitJob) -> list[_Candidate]:
        candidates = []
        for change, position in commit.changes:
            reason = self.path_reason(change)
            if reason is None:
                language = languages.detect_language(change.path)
                needs_line = language is None and languages.needs_first_line(change.path)
                if language is None and not needs_line and self.config.drop_unknown_languages:
                    reason = "unknown_language"
                else:
                    candidates.append(_Candidate(change, position, language))
            if reason is not None:
                self.counts.files[reason] += 1
        return candidates

    # -- blobs ----------------------------------------------------------------------------------
    def blob_key(self, oid: str) -> tuple:
        return (self.job.git_dir, oid, *self.key_suffix)

    def load_sizes(self, oids: set[str]) -> None:
        unknown = []
        for oid in oids:
            blob = _WORKER.cached(self.blob_key(oid))
            if blob is not None:
                self.blobs[oid] = blob
            else:
                unknown.append(oid)
        for oid, size in self.reader.sizes(unknown).items():
            self.blobs[oid] = Blob(size=-1 if size is None else size)

    def load_contents(self, oids: list[str]) -> None:
        for oid, data in self.reader.contents(oids).items():
            blob = self.blobs[oid]
            if data is None:
                blob.problem = "missing_object"
            elif self.config.drop_binary and filters.is_binary(data):
                blob.problem = "binary"
            else:
                try:
                    blob.text = data.decode("utf-8")
                except UnicodeDecodeError:
                    blob.problem = "undecodable"
            _WORKER.remember(self.blob_key(oid), blob)

    def clean(self, blob: Blob, previous: Blob | None = None) -> str:
        """The blob's text redacted and normalized (see `clean_version`), and its digest."""
        if blob.clean is None:
            clean_version(blob, previous, self.config)
            blob.digest = hashlib.blake2b(blob.clean.encode(), digest_size=16).digest()
        return blob.clean

    def is_generated(self, blob: Blob) -> bool:
        if blob.generated is None:
            blob.generated = filters.has_generated_header(blob.text)
        return blob.generated

    def is_minified(self, blob: Blob) -> bool:
        if blob.minified is None:
            blob.minified = filters.is_minified(blob.text, self.config.minified_mean_line_chars)
        return blob.minified

    # -- content-level rules and the record ------------------------------------------------------
    def content_reason(self, candidate: _Candidate, old: Blob | None, new: Blob | None) -> str:
        blobs = [blob for blob in (old, new) if blob is not None]
        for blob in blobs:
            if blob.problem:
                return blob.problem
        if candidate.language is None:
            first_line = blobs[-1].text[:200].split("\n", 1)[0]
            candidate.language = languages.detect_language(candidate.change.path, first_line)
            if candidate.language is None and self.config.drop_unknown_languages:
                return "unknown_language"
        if self.config.drop_generated_files and any(map(self.is_generated, blobs)):
            return "generated_header"
        if self.config.drop_minified and any(map(self.is_minified, blobs)):
            return "minified"
        if (
            self.config.drop_formatting_only
            and old is not None
            and new is not None
            and old.text != new.text
            and is_formatting_only(old.text, new.text, candidate.language)
        ):
            return "formatting_only"
        return ""

    def record(self, commit: CommitJob, candidate: _Candidate, old: Blob | None, new: Blob | None):
        change = candidate.change
        old_text = self.clean(old) if old is not None else None
        new_text = self.clean(new, previous=old) if new is not None else None
        kind = CHANGE_TYPES[change.status]
        if kind == "modify" and old_text == new_text:
            return None
        old_path = change.old_path or change.path
        diff, added, deleted = unified_diff(old_text, new_text, old_path, change.path)
        # The change's identity: both contents, and for a pure rename also both paths.
        digest = hashlib.blake2b(digest_size=8)
        digest.update(old.digest if old is not None else b"-")
        digest.update(new.digest if new is not None else b"-")
        if old_text == new_text:
            digest.update(f"{old_path}\0{change.path}".encode())
        content_hash = int.from_bytes(digest.digest(), "little")
        band_bytes = b""  # computed later, if ever another repository joins the dataset
        if self.job.near_dedup:
            hasher = _WORKER.hasher(self.config)
            bands = hasher.band_hashes(changed_lines(diff), fallback=content_hash)
            band_bytes = np.asarray(bands, dtype="<u8").tobytes()
        return {
            "repo": self.job.repo,
            "commit": commit.sha,
            "parent": commit.parent,
            "author_time": commit.author_time * 1000,  # Parquet stores milliseconds
            "committer_time": commit.committer_time * 1000,
            "message": commit.message,
            "author": commit.author,
            "path": change.path,
            "old_path": None if kind == "add" else old_path,
            "change_type": kind,
            "language": candidate.language,
            "old_content": old_text,
            "new_content": new_text,
            "diff": diff,
            "lines_added": added,
            "lines_deleted": deleted,
            "history_position": candidate.position,
            "_hash": content_hash,
            "_bands": band_bytes,
            "_redactions": [b.redactions for b in (old, new) if b is not None],
        }

    def noop_reason(self, old: Blob, new: Blob) -> str:
        """Why a change of the raw contents vanished once they were cleaned."""
        if self.config.normalize_code and normalize(old.text) == normalize(new.text):
            return "formatting_only"  # whitespace only, kept by drop_formatting_only=false
        return "redacted_to_noop"

    def commit_reason(self, records: list[dict]) -> str | None:
        config = self.config
        added = sum(r["lines_added"] for r in records)
        deleted = sum(r["lines_deleted"] for r in records)
        if sum(len(r["diff"]) for r in records) > config.max_diff_chars_per_commit:
            return "diff_too_large"
        if added + deleted > config.max_changed_lines_per_commit:
            return "too_many_changed_lines"
        if (
            config.drop_extreme_ratios
            and added + deleted >= config.ratio_min_lines
            and max(added, deleted) > config.max_add_delete_ratio * max(min(added, deleted), 1)
        ):
            return "extreme_ratio"
        return None

    def finish(self, commit: CommitJob, candidates: list[_Candidate]) -> None:
        records = []
        limit = self.config.max_file_bytes
        for candidate in candidates:
            change = candidate.change
            old = self.blobs[change.old_oid] if change.old_oid != ZERO_OID else None
            new = self.blobs[change.new_oid] if change.new_oid != ZERO_OID else None
            if any(b is not None and b.size > limit for b in (old, new)):
                self.counts.files["file_too_large"] += 1
                continue
            reason = self.content_reason(candidate, old, new)
            record = None if reason else self.record(commit, candidate, old, new)
            if record is None:
                self.counts.files[reason or self.noop_reason(old, new)] += 1
            else:
                records.append(record)
        if not records:
            self.counts.commits["no_files_left"] += 1
            return
        reason = self.commit_reason(records)
        if reason:
            self.counts.commits[reason] += 1
            return
        message, message_redactions = self.redact_message(commit.message)
        self.counts.redactions.update(message_redactions)
        kept = 0
        for record in records:
            for redactions in record.pop("_redactions"):
                self.counts.redactions.update(redactions)
            if self.is_duplicate(record["_hash"]):
                self.counts.files["exact_duplicate"] += 1
                continue
            record["message"] = message
            self.hashes.append(record.pop("_hash"))
            self.bands.append(record.pop("_bands"))
            for name, value in record.items():
                self.columns[name].append(value)
            self.counts.languages[record["language"] or "unknown"] += 1
            self.counts.code_bytes += len((record["new_content"] or "").encode())
            kept += 1
        self.counts.records += kept
        self.counts.commits["kept" if kept else "all_duplicates"] += 1

    def is_duplicate(self, content_hash: int) -> bool:
        """Whether an earlier record (final, earlier shard, earlier in this batch) is the same."""
        if self.earlier is None:
            return False
        if content_hash in self.seen or content_hash in self.earlier:
            return True
        self.seen.add(content_hash)
        return False

    def redact_message(self, message: str) -> tuple[str, dict[str, int]]:
        if self.config.redact_secrets or self.config.redact_emails:
            return redact(
                message, secrets=self.config.redact_secrets, emails=self.config.redact_emails
            )
        return message, {}

    # -- the whole batch -----------------------------------------------------------------------
    def run(self) -> dict:
        plans = []
        for commit in self.job.commits:
            self.counts.changes_seen += len(commit.changes)
            if commit.drop:
                self.counts.commits[commit.drop] += 1
            else:
                plans.append((commit, self.plan(commit)))
        oids = {
            oid
            for _, candidates in plans
            for candidate in candidates
            for oid in (candidate.change.old_oid, candidate.change.new_oid)
            if oid != ZERO_OID
        }
        self.load_sizes(oids)
        group: list = []
        group_bytes = 0
        pending: dict[str, None] = {}
        for commit, candidates in plans:
            for candidate in candidates:
                for oid in (candidate.change.old_oid, candidate.change.new_oid):
                    blob = self.blobs.get(oid)
                    if blob is None or oid in pending or blob.text is not None or blob.problem:
                        continue
                    if blob.size < 0:
                        blob.problem = "missing_object"
                    elif blob.size <= self.config.max_file_bytes:
                        pending[oid] = None
                        group_bytes += blob.size
            group.append((commit, candidates))
            if group_bytes >= GROUP_BYTES:
                self._flush(group, pending)
                group, group_bytes, pending = [], 0, {}
        self._flush(group, pending)
        return self.write()

    def _flush(self, group: list, pending: dict[str, None]) -> None:
        if pending:
            self.load_contents(list(pending))
        for commit, candidates in group:
            self.finish(commit, candidates)

    def write(self) -> dict:
        store = DatasetDir(Path(self.job.out))
        paths = store.staged(self.job.repo_key, self.job.shard)
        counts = self.counts
        if counts.records:
            keys = {
                "content_hash": self.hashes,
                "bands": self.bands,
                "kept": [True] * len(self.hashes),
            }
            write_parquet_atomic(paths.keys, arrays.table(keys, KEYS_SCHEMA), records=False)
            table = arrays.table(self.columns, RECORD_SCHEMA)
            write_parquet_atomic(paths.data, table, records=True)
        kept = counts.commits.pop("kept", 0)
        ledger = {
            "repo": self.job.repo,
            "repo_key": self.job.repo_key,
            "shard": self.job.shard,
            "index": self.job.index,
            "commits": [commit.sha for commit in self.job.commits],
            "commits_kept": kept,
            "commit_reasons": dict(counts.commits),
            "file_reasons": dict(counts.files),
            "languages": dict(counts.languages),
            "redactions": dict(counts.redactions),
            "changes_seen": counts.changes_seen,
            "records": counts.records,
            "code_bytes": counts.code_bytes,
            "data_bytes": paths.data.stat().st_size if counts.records else 0,
        }
        write_json_atomic(paths.ledger, ledger)
        return ledger


def extract_batch(job: BatchJob) -> dict:
    """Extract one batch into a staged shard; return its ledger."""
    return _Batch(job).run()
