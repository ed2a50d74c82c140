"""`zen-coder prepare`: mined commit records in, a tokenizer and packed training data out.

For each repository the newest commits are held out for validation; the tokenizer is trained on
the training split only; samples of every format are built, checked against benchmark problems,
tokenized and packed per split. The output is built in a temporary folder and moved into place
at the end, so a killed run leaves the previous output intact; rerunning with the same inputs and
settings reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from zen_coder import __version__
from zen_coder.benchmark_problems import load_problems
from zen_coder.data.blame import FileBlame
from zen_coder.data.config import PrepareConfig
from zen_coder.data.decontaminate import BenchmarkIndex
from zen_coder.data.pack import SplitWriter, channel_dtypes, tokenize
from zen_coder.data.records import (
    MinedDataset,
    open_mined,
    read_shard,
    repository_metadata,
    shard_contents,
)
from zen_coder.data.samples import (
    RecordSamples,
    Sample,
    file_chains,
    history_chunks,
    history_sample,
    validation_commits,
)
from zen_coder.data.tokenizer import (
    RoleTokenizer,
    read_tokenizer,
    save_base_tokenizer,
    save_tokenizer,
    tokenizer_sources,
    train_tokenizer,
)
from zen_coder.errors import ZenCoderError
from zen_coder.files import (
    install_directory,
    read_json,
    temporary_path,
    user_cache_dir,
    write_json_atomic,
)
from zen_coder.history.languages import LANGUAGES

FORMAT_VERSION = 4  # 2: the manifest records the split; 3: a base tokenizer's own role tokens;
# 4: file lines carry their blame ages in the time channel (data/blame.py)
SPLITS = ("train", "validation")
DEFAULT_BENCHMARKS = ("humaneval", "mbpp", "multipl-e")
CHARS_PER_TOKEN = 3.0  # for cutting file histories into chunks of about one context
BATCH = 1024  # samples tokenized per call


@dataclass
class PrepareReport:
    out: Path
    manifest: dict
    elapsed: float
    reused: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class RepositorySplit:
    key: str
    name: str
    held_out: set[str]  # its validation commits
    validation_from: tuple[int, str] | None  # the oldest of them: (commit time, SHA)

    def split(self, commit: str) -> str:
        return "validation" if commit in self.held_out else "train"

    def record(self) -> dict:
        """The split as the manifest keeps it: how many commits are held out and the oldest of
        them. The validation commits are exactly the repository's commits at or after that one
        in (time, SHA) order, so the record stays small for any history."""
        start = list(self.validation_from) if self.validation_from else None
        return {"validation_commits": len(self.held_out), "validation_from": start}


def _repository_commits(dataset: MinedDataset) -> Iterator[tuple[str, str, set[tuple[int, str]]]]:
    """Each repository's shard key, name and commits: (commit time, SHA)."""
    for key in sorted(dataset.shards):
        table = pa.concat_tables(
            read_shard(path, ["repo", "commit", "committer_time"]) for path in dataset.shards[key]
        )
        times = table["committer_time"].cast(pa.int64()).to_pylist()
        commits = set(zip(times, table["commit"].to_pylist(), strict=True))
        yield key, table["repo"][0].as_py(), commits


def split_repositories(dataset: MinedDataset, fraction: float) -> list[RepositorySplit]:
    """Every repository with its validation commits: the newest `fraction` by commit time."""
    repositories = []
    for key, name, commits in _repository_commits(dataset):
        held_out = validation_commits(list(commits), fraction)
        start = min((commit for commit in commits if commit[1] in held_out), default=None)
        repositories.append(RepositorySplit(key, name, held_out, start))
    return repositories


def prepared_split(prepared: Path) -> tuple[MinedDataset, list[RepositorySplit]]:
    """The mined dataset a prepared folder was made from, split exactly as `prepare` split it.

    Read from the prepared manifest rather than recomputed from a fraction, so whatever evaluates
    on the validation commits (the history benchmark) holds out what training never saw."""
    manifest = _prepared_manifest(prepared)
    rerun = f"rerun `zen-coder prepare {manifest['mined']} --out {prepared}`"
    if "split" not in manifest:
        raise ZenCoderError(
            f"{prepared} was prepared by an older zen-coder that did not record its "
            f"train/validation split; {rerun}"
        )
    dataset = open_mined(Path(manifest["mined"]))
    records = manifest["split"]["repositories"]
    repositories = []
    for key, name, commits in _repository_commits(dataset):
        start = (records.get(name) or {}).get("validation_from")
        held_out = {sha for time, sha in commits if start and (time, sha) >= tuple(start)}
        repositories.append(RepositorySplit(key, name, held_out, tuple(start) if start else None))
    recorded = {repository.name: repository.record() for repository in repositories}
    if dataset.fingerprint != manifest["identity"]["mined"] or recorded != records:
        raise ZenCoderError(
            f"the mined dataset {dataset.root} changed after {prepared} was prepared from it; "
            f"{rerun}"
        )
    return dataset, repositories


def _prepared_manifest(prepared: Path) -> dict:
    missing = (
        f"{prepared} is not a prepared dataset; run `zen-coder prepare` and pass its --out folder"
    )
    manifest = read_json(prepared / "manifest.json", missing, "rerun `zen-coder prepare`")
    if "schema_version" in manifest and "identity" not in manifest:
        raise ZenCoderError(
            f"{prepared} is a mined dataset, not a prepared one: run `zen-coder prepare "
            f"{prepared} --out PREPARED` and pass the PREPARED folder"
        )
    if "identity" not in manifest:
        raise ZenCoderError(f"{prepared} is not a prepared dataset; run `zen-coder prepare`")
    return manifest


def _training_texts(
    dataset: MinedDataset, repositories: list[RepositorySplit], budget: int
) -> Iterator[str]:
    """Training-split text for the tokenizer, an equal share of `budget` characters per repo."""
    share = max(1, budget // len(repositories))
    for repo in repositories:
        used = 0
        for path in dataset.shards[repo.key]:
            table = read_shard(path, ["commit", "message", "diff", "new_content"])
            for row in table.to_pylist():
                if repo.split(row["commit"]) != "train":
                    continue
                for text in (row["new_content"], row["message"], row["diff"]):
                    if text:
                        used += len(text)
                        yield text
                if used >= share:
                    break
            if used >= share:
                break


def _repository_samples(
    dataset: MinedDataset, repo: RepositorySplit, config: PrepareConfig
) -> Iterator[Sample]:
    """Every sample of one repository: per record while its contents are read, then histories."""
    rows = repository_metadata(dataset.shards[repo.key]).to_pylist()
    splits = [repo.split(row["commit"]) for row in rows]
    budget = int(config.context_length * CHARS_PER_TOKEN)
    chunks = list(history_chunks(rows, splits, budget)) if config.file_histories else []
    chunk_starts = {chunk.first for chunk in chunks}
    befores: dict[int, tuple[str, tuple[int, ...]]] = {}
    blame = FileBlame(file_chains(rows))
    per_record = RecordSamples(config)
    offset = 0
    for contents in shard_contents(dataset.shards[repo.key]):
        olds = contents["old_content"].to_pylist()
        news = contents["new_content"].to_pylist()
        for row_index, (old, new) in enumerate(zip(olds, news, strict=True)):
            index = offset + row_index
            lines = blame.times(index, rows[index], old, new)
            yield from per_record.all(rows[index], old, new, splits[index], lines)
            # A chunk opens with the file as it was, when that leaves room for the changes.
            if index in chunk_starts and old and len(old) <= budget // 2:
                befores[index] = (old, lines.before)
        offset += len(olds)
    for chunk in chunks:
        yield history_sample(chunk, rows, *befores.get(chunk.first, (None, None)))


def _batches(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenizer_identity(tokenizer: Path | None) -> str:
    """The given tokenizer by content (tokenizer.json and the settings read beside it): the same
    files copied elsewhere are the same tokenizer, and others written over the old path are not."""
    if tokenizer is None:
        return "trained"
    digest = hashlib.sha256()
    for source in tokenizer_sources(tokenizer):
        digest.update(f"{source.name}\0{source.stat().st_size}\0".encode())
        digest.update(source.read_bytes())
    return "sha256:" + digest.hexdigest()


def _previous_output(out: Path, identity: dict) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("identity") == identity else None


def _clear_leftovers(out: Path) -> None:
    for leftover in out.parent.glob(f".{out.name}.*-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def prepare(
    mined: Path,
    out: Path,
    config: PrepareConfig | None = None,
    *,
    tokenizer: Path | None = None,
    benchmarks: Sequence[str] | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> PrepareReport:
    """Prepare the mined dataset at `mined` for training, into the folder `out`.

    `tokenizer` reuses an existing tokenizer (e.g. a base model's) instead of training one;
    `benchmarks` are the decontamination sources (names or local paths, see
    `zen_coder.benchmark_problems.load_problems`). `progress(total_records)` may return a
    callback that receives the number of records done.
    """
    config = config or PrepareConfig()
    started = time.monotonic()
    dataset = open_mined(mined)
    if not config.decontaminate:
        sources: list = []
    else:
        sources = list(DEFAULT_BENCHMARKS if benchmarks is None else benchmarks)
    identity = {
        "format_version": FORMAT_VERSION,
        "mined": dataset.fingerprint,
        "config": config.to_dict(),
        "tokenizer": _tokenizer_identity(tokenizer),
        "benchmarks": [str(source) for source in sources],
    }
    out = out.resolve()
    previous = _previous_output(out, identity)
    if previous is not None:
        return PrepareReport(out, previous, time.monotonic() - started, reused=True)
    _clear_leftovers(out)
    work = temporary_path(out)
    work.mkdir(parents=True)
    try:
        repositories = split_repositories(dataset, config.validation_fraction)
        added: tuple[str, ...] = ()
        if tokenizer is not None:
            base = read_tokenizer(tokenizer)
            save_base_tokenizer(base, work, config.context_length)
            added = base.added
        else:
            texts = _training_texts(dataset, repositories, config.tokenizer_train_chars)
            save_tokenizer(train_tokenizer(texts, config.vocab_size), work, config.context_length)
        # Read back as training and inference will read it, so that all agree on the roles.
        tok = read_tokenizer(work)
        index = None
        if sources:
            problems = [problem for source in sources for problem in load_problems(source)]
            index = BenchmarkIndex.cached(
                problems, config.decontamination_ngram, user_cache_dir() / "decontamination"
            )
        manifest = _write_splits(work, dataset, repositories, config, tok, index, progress)
        manifest.update(
            {
                "identity": identity,
                "zen_coder_version": __version__,
                "mined": str(Path(mined).resolve()),
                "split": {
                    "validation_fraction": config.validation_fraction,
                    "repositories": {repo.name: repo.record() for repo in repositories},
                },
                "tokenizer_source": str(tokenizer.resolve()) if tokenizer else "trained",
                "added_tokens": list(added),
                "benchmarks": identity["benchmarks"],
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        write_json_atomic(work / "manifest.json", manifest)
        install_directory(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return PrepareReport(out, manifest, time.monotonic() - started)


def _write_splits(
    work: Path,
    dataset: MinedDataset,
    repositories: list[RepositorySplit],
    config: PrepareConfig,
    tok: RoleTokenizer,
    index: BenchmarkIndex | None,
    progress: Callable[[int], Callable[[int], None]] | None,
) -> dict:
    repo_names = ["<unknown>", *sorted({repo.name for repo in repositories})]
    language_names = ["<unknown>", *LANGUAGES]
    repo_ids = {name: number for number, name in enumerate(repo_names) if number}
    language_ids = {name: number for number, name in enumerate(language_names) if number}
    dtypes = channel_dtypes(tok.tokenizer.get_vocab_size(), len(repo_names), config.context_length)
    writers = {
        split: SplitWriter(
            work / split, config.context_length, dtypes, tok.pad_id, seed=config.seed
        )
        for split in SPLITS
    }
    samples: Counter = Counter()
    tokens: Counter = Counter()
    by_language: Counter = Counter()
    samples_by_language: Counter = Counter()
    removed: list[dict] = []
    advance = progress(dataset.manifest["totals"]["records"]) if progress else None
    for repo in repositories:
        for batch in _batches(_repository_samples(dataset, repo, config), BATCH):
            kept = []
            for sample in batch:
                problem = index.match(sample.text()) if index is not None else None
                if problem is None:
                    kept.append(sample)
                    continue
                removed.append(
                    {
                        "format": sample.format,
                        "split": sample.split,
                        "repo": sample.repo,
                        "path": sample.path,
                        "commits": sample.commits,
                        "benchmark": problem.benchmark,
                        "task_id": problem.task_id,
                    }
                )
            documents = tokenize(kept, tok, repo_ids, language_ids)
            for sample, document in zip(kept, documents, strict=True):
                writers[sample.split].add(document)
                key = f"{sample.split}/{sample.format}"
                samples[key] += 1
                tokens[key] += len(document.tokens)
                language = f"{sample.split}/{sample.language or 'unknown'}"
                by_language[language] += len(document.tokens)
                samples_by_language[language] += 1
        if advance is not None:
            advance(dataset.manifest["repos"][repo.name]["records"])
    sequences = {split: writer.close() for split, writer in writers.items()}
    if not sum(samples.values()):
        raise ZenCoderError(
            f"no training samples came out of {dataset.root}: every record was filtered; "
            "mine more history or relax the prepare settings"
        )
    write_json_atomic(work / "repos.json", repo_names)
    write_json_atomic(work / "languages.json", language_names)
    return {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "vocab_size": tok.tokenizer.get_vocab_size(),
        "special_tokens": tok.ids,
        "bos_token_id": tok.bos_id,
        "context_length": config.context_length,
        "channels": dtypes,
        "sequences": sequences,
        "samples": dict(sorted(samples.items())),
        "tokens": dict(sorted(tokens.items())),
        "samples_by_language": dict(sorted(samples_by_language.items())),
        "tokens_by_language": dict(sorted(by_language.items())),
        "decontamination": {"removed": len(removed), "samples": removed},
        "repositories": len(repo_names) - 1,
    }
