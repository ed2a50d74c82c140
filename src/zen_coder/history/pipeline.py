"""`zen-coder mine`: repositories in, one deduplicated dataset directory out.

A run claims the output directory, recovers what an interrupted run left, resolves the inputs,
decides which commits forks share, mines every repository (its walk in a coordinating thread, its
batches in a shared pool of worker processes, or each repository as one task on a Ray cluster),
deduplicates the new shards against the dataset and rewrites the manifest.

The extractor and dedup are imported only once there is something to extract: with numpy, pyarrow
and Pygments they take 0.1 s, more than the rest of a rerun that finds nothing new.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import hashlib
import json
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from zen_coder import __version__
from zen_coder.errors import ZenCoderError
from zen_coder.files import write_bytes_atomic, write_json_atomic
from zen_coder.history import sources
from zen_coder.history.config import MineConfig
from zen_coder.history.sources import Repository, RepoSpec
from zen_coder.history.store import RECORD_FIELDS, SCHEMA_VERSION, DatasetDir
from zen_coder.history.walk import BatchJob, WalkPlan, walk

Progress = Callable[[str, int], None]

# The driver of a Ray run writes its run id to `_state/run`; a task that does not find it there
# is on a node that does not share the output folder.
RUN_MARKER = "run"


@dataclass
class RunReport:
    """What one run did; the dataset-wide counts are in the manifest it wrote."""

    out: Path
    manifest: dict
    elapsed: float
    new_commits: int = 0
    new_records: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_salt(path: Path | None = None) -> bytes:
    """The secret that salts author hashes: $ZEN_CODER_SALT, a given file, or a per-user file.

    It lives outside the dataset on purpose: whoever receives a dataset must not be able to test
    guessed emails against its author hashes.
    """
    if path is None and os.environ.get("ZEN_CODER_SALT"):
        return os.environ["ZEN_CODER_SALT"].encode()
    if path is None:
        base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        path = Path(base) / "zen-coder" / "salt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    try:
        salt = path.read_text().strip().encode()
    except OSError as exc:
        raise ZenCoderError(f"cannot read salt file {path}: {exc.strerror}") from None
    if not salt:
        raise ZenCoderError(f"salt file {path} is empty; put a random secret in it")
    return salt


def _fingerprint(salt: bytes) -> str:
    return hashlib.blake2b(salt, digest_size=8, person=b"zen-salt").hexdigest()


def _check_compatible(store: DatasetDir, config: MineConfig, salt: bytes) -> dict | None:
    """The previous manifest, if the directory may be extended with these settings."""
    if not store.manifest.exists():
        return None
    try:
        previous = json.loads(store.manifest.read_text())
    except (OSError, ValueError):
        raise ZenCoderError(
            f"{store.manifest} is unreadable; remove the directory or choose another --out"
        ) from None
    if previous.get("schema_version") != SCHEMA_VERSION:
        raise ZenCoderError(
            f"{store.root} holds schema version {previous.get('schema_version')}, this zen-coder "
            f"writes {SCHEMA_VERSION}; mine into a new --out directory"
        )
    changed = sorted(
        key
        for key, value in config.content_settings().items()
        if previous.get("config", {}).get(key) != value
    )
    if changed:
        raise ZenCoderError(
            f"{store.root} was mined with other settings ({', '.join(changed)}); use the same "
            "settings to extend it, or a new --out directory"
        )
    if previous.get("salt_fingerprint") != _fingerprint(salt):
        raise ZenCoderError(
            f"{store.root} was mined with another author salt; set the same ZEN_CODER_SALT "
            "or --salt-file, or mine into a new --out directory"
        )
    return previous


def _resolve_all(specs: Sequence[RepoSpec], cache_dir: Path, report: RunReport) -> list[Repository]:
    repos: list[Repository] = []
    names: dict[str, str] = {}
    for spec in specs:
        try:
            repo = sources.resolve(spec, cache_dir)
        except sources.EmptyRepository as exc:
            report.warnings.append(str(exc))
            continue
        except ZenCoderError as exc:
            report.errors.append(str(exc))
            continue
        if repo.name in names:
            raise ZenCoderError(
                f"two inputs are both named {repo.name!r} ({names[repo.name]}, {spec.shown}); "
                "give them distinct `name`s in a manifest"
            )
        names[repo.name] = spec.shown
        if sources.shallow_boundary(repo.git_dir):
            report.warnings.append(
                f"{spec.shown}: shallow clone, history before its boundary is missing; run "
                "`git fetch --unshallow` there to mine all of it"
            )
        repos.append(repo)
    return repos


def fork_exclusions(repos: list[Repository]) -> dict[str, frozenset[str]]:
    """Commits each repository leaves to an earlier input that shares them (forks, mirrors).

    Repositories share commits only if they share a root commit, so only those are compared.
    """
    roots = {repo.name: sources.root_commits(repo) for repo in repos}
    exclusions: dict[str, frozenset[str]] = {}
    history: dict[str, set[str]] = {}
    for position, repo in enumerate(repos):
        earlier = [other for other in repos[:position] if roots[other.name] & roots[repo.name]]
        if not earlier:
            continue
        for other in earlier:
            if other.name not in history:
                history[other.name] = sources.all_commits(other)
        mine = sources.all_commits(repo)
        shared = set().union(*(history[other.name] & mine for other in earlier))
        exclusions[repo.name] = frozenset(shared)
    return exclusions


def mine_repository(
    repo: Repository,
    plan: WalkPlan,
    progress: Progress,
    pool: Executor | None = None,
    in_flight: int = 4,
) -> int:
    """Mine one repository: walk here, extract batches in `pool` (or inline), in commit order.

    Returns how many commits it mined (commits an earlier run mined are skipped, not counted).
    When every commit of the revision is mined already, the walk is skipped: listing the commits
    takes a fraction of reading each one's changed files.
    """
    if plan.done:
        commits = sources.all_commits(repo)
        if commits <= plan.done:
            progress(repo.name, len(commits))
            return 0
    window: deque[Future] = deque()
    mined = 0

    def collect(ledger: dict) -> None:
        nonlocal mined
        mined += len(ledger["commits"])
        progress(repo.name, len(ledger["commits"]))

    for job in walk(repo, plan, on_skip=lambda n: progress(repo.name, n)):
        if pool is None:
            collect(_extract_batch(job))
            continue
        window.append(pool.submit(_extract_batch, job))
        while len(window) >= in_flight:
            collect(window.popleft().result())
    while window:
        collect(window.popleft().result())
    return mined


@functools.cache
def load_extractor() -> None:
    """Import the extractor (with numpy, pyarrow, Pygments and pygit2), once per process."""
    import zen_coder.history.extract  # noqa: F401 - imported for its cost


def _extract_batch(job: BatchJob) -> dict:
    """Extract one batch with what existed before it (the imported modules above all) exempt
    from garbage collection, and collectable again after.

    Parsing Python makes many objects, so full collections run often, and each would walk every
    module's objects again (0.1 s of a run that parses much Python). The exemption ends with the
    batch because the process may be the caller's own (one worker, the quickstart, a Ray worker
    that runs other tasks next), whose objects must not stay uncollectable.
    """
    load_extractor()
    from zen_coder.history.extract import extract_batch

    gc.freeze()
    try:
        return extract_batch(job)
    finally:
        gc.unfreeze()


def finalize(
    store: DatasetDir, order: list[str], config: MineConfig, pool: Executor | None = None
) -> None:
    """Deduplicate the staged shards against the dataset and make them final, the shards
    rewritten or moved in `pool` when there is one."""
    if not store.has_staged():
        return
    from zen_coder.history import dedup

    jobs = dedup.promotions(str(store.root), order, config)
    for _ in (pool.map if pool is not None else map)(dedup.promote_shard, *zip(*jobs, strict=True)):
        pass


def _mine_on_ray(repo: Repository, plan: WalkPlan, cache_dir: Path | None) -> int:
    """One repository as a Ray task, possibly on another machine than the driver.

    The driver's clone cache is not there: the task checks that it sees the output folder the
    driver claimed, then reaches the repository from its own node.
    """
    _check_output_shared(plan)
    return mine_repository(sources.reach_here(repo, cache_dir), plan, lambda name, n: None)


def _check_output_shared(plan: WalkPlan) -> None:
    """Shards staged in a folder the driver cannot see would be lost without a word."""
    try:
        marker = (Path(plan.out) / "_state" / RUN_MARKER).read_text()
    except OSError:
        marker = None
    if marker != plan.run:
        raise ZenCoderError(
            f"output folder {plan.out} on host {socket.gethostname()} is not the one the driver "
            "writes; put --out on storage every Ray node reads and writes"
        )


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[Executor | None]:
    """Worker processes for extraction and finalization, or None to work inline."""
    if workers < 2:
        yield None
        return
    # Imported here: a run without workers does not need them (5 ms).
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # On Linux, workers are forked, in milliseconds, with the extractor loaded here once rather
    # than in each of them; the first submit forks them all, here, before any other thread of this
    # process exists. (macOS frameworks are not fork-safe: there they are spawned, and load it.)
    load_extractor()
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("fork" if sys.platform == "linux" else "spawn"),
        initializer=_init_worker_process,
        initargs=(os.getpid(),),
    )
    try:
        pool.submit(os.getpid)  # forks every worker now
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _init_worker_process(parent: int) -> None:
    """Run in each pool process: leave Ctrl-C to the parent and die with it, even on `kill -9`;
    then load the extractor, unless it came with the fork."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    load_extractor()


def _run_local(
    repos, plans, workers: int, progress: Progress, pool: Executor | None, report: RunReport
) -> None:
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(repos)))) as threads:
        futures = {
            threads.submit(
                mine_repository, repo, plans[repo.name], progress, pool, 2 * workers
            ): repo
            for repo in repos
        }
        for future, repo in futures.items():
            try:
                report.new_commits += future.result()
            except ZenCoderError as exc:
                report.errors.append(f"{repo.spec.shown}: {exc}")
            except Exception as exc:  # one repository's failure must not stop the others
                report.errors.append(f"{repo.spec.shown}: {unexpected(exc)}")


def unexpected(exc: BaseException) -> str:
    return f"unexpected {type(exc).__name__}: {exc}; please report it with this message"


def _run_ray(
    repos,
    plans,
    store: DatasetDir,
    cache_dir: Path | None,
    commits: dict[str, int],
    progress: Progress,
    report: RunReport,
) -> None:
    """Mine each repository as one Ray task, on whichever node Ray places it.

    Tasks mirror clone URLs into `cache_dir` on their node (None: each node's user cache).
    """
    try:
        import ray
    except ImportError:
        raise ZenCoderError("--executor ray needs Ray: pip install 'zen-coder[ray]'") from None
    if not repos:
        return
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    write_bytes_atomic(store.state / RUN_MARKER, plans[repos[0].name].run.encode())
    task = ray.remote(_mine_on_ray)
    pending = {task.remote(repo, plans[repo.name], cache_dir): repo for repo in repos}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        repo = pending.pop(done[0])
        try:
            report.new_commits += ray.get(done[0])
        except Exception as exc:  # Ray wraps the task's exception; report it as one line
            cause = getattr(exc, "cause", None) or exc
            message = str(cause) if isinstance(cause, ZenCoderError) else unexpected(cause)
            if not message.startswith(f"{repo.spec.shown}: "):
                message = f"{repo.spec.shown}: {message}"
            report.errors.append(message)
        progress(repo.name, commits[repo.name])


def _totals(ledgers: list[dict]) -> dict:
    keys = ("changes_seen", "records", "code_bytes", "data_bytes", "commits_kept")
    totals = {key: sum(ledger[key] for ledger in ledgers) for key in keys}
    totals["commits_seen"] = sum(len(ledger["commits"]) for ledger in ledgers)
    totals["shards"] = sum(1 for ledger in ledgers if ledger["records"])
    for name in ("commit_reasons", "file_reasons", "languages", "redactions"):
        merged: Counter = Counter()
        for ledger in ledgers:
            merged.update(ledger[name])
        totals[name] = dict(sorted(merged.items()))
    return totals


def build_manifest(
    store: DatasetDir,
    config: MineConfig,
    salt: bytes,
    inputs: list[dict],
    runs: list[dict],
) -> dict:
    ledgers = store.final_ledgers()
    by_repo: dict[str, list[dict]] = {}
    for ledger in ledgers:
        by_repo.setdefault(ledger["repo"], []).append(ledger)
    return {
        "schema_version": SCHEMA_VERSION,
        "zen_coder_version": __version__,
        "record_schema": {name: kind for name, kind, _ in RECORD_FIELDS},
        "config": config.content_settings(),
        "salt_fingerprint": _fingerprint(salt),
        "inputs": inputs,
        "totals": _totals(ledgers),
        "repos": {name: _totals(group) for name, group in sorted(by_repo.items())},
        "shards": sorted(
            str(store.final(ledger["repo_key"], ledger["shard"]).data.relative_to(store.root))
            for ledger in ledgers
            if ledger["records"]
        ),
        "runs": runs,
    }


def _plans(
    repos: list[Repository],
    store: DatasetDir,
    config: MineConfig,
    salt: bytes,
    previous: dict | None,
) -> dict[str, WalkPlan]:
    """What each repository's walk needs: settings, prior progress, fork exclusions."""
    exclusions = fork_exclusions(repos) if config.dedup_forks and len(repos) > 1 else {}
    # Near-duplicate keys are only worth computing once the dataset spans repositories.
    dataset_repos = set((previous or {}).get("repos", {})) | {repo.name for repo in repos}
    run = secrets.token_hex(8)
    ranks = {repo.key: rank for rank, repo in enumerate(repos)}
    return {
        repo.name: WalkPlan(
            config=config,
            salt=salt,
            out=str(store.root),
            done=frozenset(store.mined_commits(repo.key)),
            excluded=exclusions.get(repo.name, frozenset()),
            near_dedup=config.dedup_near and len(dataset_repos) > 1,
            run=run,
            repo_ranks=ranks,
        )
        for repo in repos
    }


# Fewer new commits per worker than this (or than a batch, if batches are smaller), and starting
# worker processes costs more than it saves: measured on the first 100 and 200 commits of a real
# history, two workers took 0.36 s against one's 0.32 s, and 0.35 s against 0.36 s.
MIN_COMMITS_PER_WORKER = 100


def _share_out(
    repos: list[Repository],
    plans: dict[str, WalkPlan],
    counts: dict[str, int],
    workers: int,
    config: MineConfig,
) -> int:
    """How many worker processes to start; for a short run, also how to cut its commits.

    Walks cut batches of commits_per_batch as they go. A run of one or two rounds of such batches
    would keep some workers idle while others finish the last ones, so its histories are walked
    first and cut into a multiple of the workers, of about the same work each (walk._balanced).
    """
    new = {repo.name: max(counts[repo.name] - len(plans[repo.name].done), 0) for repo in repos}
    total = sum(new.values())
    per_worker = min(MIN_COMMITS_PER_WORKER, config.commits_per_batch)
    workers = max(1, min(workers, total // per_worker))
    if workers == 1:
        return 1
    rounds = math.ceil(total / (workers * config.commits_per_batch))
    if rounds <= 2:
        for repo in repos:
            if new[repo.name]:
                fewest = math.ceil(new[repo.name] / config.commits_per_batch)
                shared = round(workers * rounds * new[repo.name] / total)
                plans[repo.name].batches = max(fewest, shared)
    return workers


def _write_manifest(
    store: DatasetDir,
    config: MineConfig,
    salt: bytes,
    previous: dict | None,
    repos: list[Repository],
    run: dict,
) -> dict:
    inputs = {entry["name"]: entry for entry in (previous or {}).get("inputs", [])}
    for repo in repos:
        inputs[repo.name] = {
            "name": repo.name,
            "source": repo.spec.shown,
            "revision": repo.spec.revision,
        }
    runs = [*(previous or {}).get("runs", []), run]
    ordered_inputs = sorted(inputs.values(), key=lambda entry: entry["name"])
    manifest = build_manifest(store, config, salt, ordered_inputs, runs)
    write_json_atomic(store.manifest, manifest)
    return manifest


def mine(
    specs: Sequence[RepoSpec],
    out: Path,
    config: MineConfig | None = None,
    *,
    workers: int | None = None,
    executor: str = "local",
    cache_dir: Path | None = None,
    salt: bytes | None = None,
    progress: Callable[[int], Callable[[str, int], None]] | None = None,
) -> RunReport:
    """Mine `specs` into the dataset directory `out` (created, or extended incrementally).

    `progress(total_commits)` may return a callback that receives (repo name, commits done).
    """
    config = config or MineConfig()
    workers = workers or os.cpu_count() or 1
    salt = salt if salt is not None else load_salt()
    if executor not in ("local", "ray"):
        raise ZenCoderError(f"unknown executor {executor!r}; choose local or ray")
    started = time.monotonic()
    store = DatasetDir(Path(out))
    store.root.mkdir(parents=True, exist_ok=True)
    store.lock()
    try:
        previous = _check_compatible(store, config, salt)
        store.recover()
        report = RunReport(out=store.root, manifest={}, elapsed=0.0)
        repos = _resolve_all(specs, cache_dir or sources.default_cache_dir(), report)
        plans = _plans(repos, store, config, salt, previous)
        counts = {repo.name: sources.commit_count(repo) for repo in repos}
        advance = progress(sum(counts.values())) if progress else None
        lock = threading.Lock()

        def on_progress(name: str, commits: int) -> None:
            if advance is not None:
                with lock:
                    advance(name, commits)

        order = [repo.key for repo in repos]
        if executor == "ray":
            _run_ray(repos, plans, store, cache_dir, counts, on_progress, report)
            finalize(store, order, config)
        else:
            workers = _share_out(repos, plans, counts, workers, config)
            with _worker_pool(workers) as pool:
                _run_local(repos, plans, workers, on_progress, pool, report)
                finalize(store, order, config, pool)
        report.elapsed = time.monotonic() - started
        run = {
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(report.elapsed, 2),
            "new_commits": report.new_commits,
            "workers": workers,
            "executor": executor,
            "errors": report.errors,
        }
        report.manifest = _write_manifest(store, config, salt, previous, repos, run)
        previous_records = (previous or {}).get("totals", {}).get("records", 0)
        report.new_records = report.manifest["totals"]["records"] - previous_records
        return report
    finally:
        store.release()
