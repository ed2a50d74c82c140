"""Keystroke latency of `zen-coder serve` against transformers' `generate`, same model, same run.

Editing sessions replay real commits (benchmarks/editing_sessions.py): the new lines of changes
mined with `zen-coder mine` from clones of ../shared/repos/*.bundle and from a synthetic
repository are typed character by character, and the editor asks for a completion (OpenAI
/v1/completions with `suffix`, plus `path` and `language`) whenever typing pauses longer than its
debounce. N editors type at once (concurrency 1, 8 and 32), each sending its next request when
the last answer is in (`--realtime` also waits for the typing clock): at concurrency N the server
has N requests to serve at every moment.

Two servers answer the same requests, each in a process of its own on a free port:
- `zen-coder serve --backend native`: the native engine (continuous batching, a prefix cache per
  slot, speculation), or `--server URL` already running;
- the baseline, `zen-coder serve --backend huggingface`: the same model exported with
  `zen_coder.model.hf.save_pretrained`, answered one request at a time by transformers'
  `generate`. The same server code builds both prompts and cuts both completions by the same
  editor rules, so the two do the same work and only the backend differs.
Then, as a floor under the baseline, transformers' `generate` alone in this process, no server,
on the same prompts forced to the same token counts.

The model is the preset's with random weights (`--model FOLDER` for a trained one), decoded
greedily: completions run until max_tokens, the model's end token or the editor's line rules
(indentation, a repeated suffix line) cut them, the same on both backends. Reported per
backend and concurrency: time to first token and completion latency p50/p95 (from sending the
request, queueing included), completion tokens/s while all N editors had a request out (and
over the whole run, whose tail has fewer editors left: "whole"), and the share of
prompt tokens the server served from its prefix cache (`usage.prompt_tokens_details.
cached_tokens`); then the server's ratios to the baseline. Targets, tiny preset on CPU, at
concurrency 8: throughput >= 4x the baseline's, p50 completion latency <= 0.5x, prefix reuse
>= 80% of prompt tokens. Writes results.json and serve-latency.png to --out.

    python benchmarks/serve_latency.py                    # tiny preset, 4-6 minutes on 2 cores
    python benchmarks/serve_latency.py --preset small     # 18 requests a server, ~4 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
import torch
from editing_sessions import Request, Session, Window, build_sessions, mined_records
from mine_throughput import available_bundles, bundle_repo, synthetic_repo

from zen_coder.data.tokenizer import read_tokenizer, save_tokenizer, train_tokenizer
from zen_coder.errors import ZenCoderError
from zen_coder.files import install_directory, write_atomic, write_json_atomic
from zen_coder.history.languages import LANGUAGES
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.inference.prompts import Budget, PromptFormat, PromptParts, canonical_language
from zen_coder.model.config import ModelConfig, preset
from zen_coder.model.folder import TOKENIZER_FILES, load_model, read_config, save_model
from zen_coder.model.hf import save_pretrained
from zen_coder.model.model import ZenCoder
from zen_coder.serving.settings import ServerSettings

WORKSPACE = Path(tempfile.gettempdir()) / "zen-coder-bench-serve"
RECENT_COMMITS = 200  # of each repository: enough edits, mined in seconds
SYNTHETIC_COMMITS = 300
SALT = b"zen-coder serve_latency benchmark"  # author hashes are never looked at here
TOKENIZER_TEXT_CHARS = 4_000_000  # of the mined code, for the random model's tokenizer
SERVER_START_SECONDS = 600
NATIVE = "native engine"  # zen-coder serve --backend native
BASELINE = "transformers generate"  # zen-coder serve --backend huggingface, the export
DONE = "[DONE]"

# Targets at concurrency TARGET_LEVEL (tiny preset, CPU).
TARGET_LEVEL = 8
THROUGHPUT_TARGET = 4.0
LATENCY_TARGET = 0.5
REUSE_TARGET = 0.8


@dataclass(frozen=True)
class Workload:
    """How much each concurrency level replays: `max(level, sessions)` sessions of exactly
    `requests_per_session` requests each, every level its own sessions (so no level finds the
    prompts of another in the server's cache)."""

    levels: tuple[int, ...]
    sessions: int
    requests_per_session: int
    max_tokens: int


# The small preset in bfloat16: 5.6 GB a copy, not 11 (the benchmark holds two).
DTYPES = {"small": "bfloat16"}
WORKLOADS = {
    "tiny": Workload(levels=(1, 8, 32), sessions=8, requests_per_session=8, max_tokens=64),
    "small": Workload(levels=(1, 8), sessions=1, requests_per_session=2, max_tokens=16),
}


@dataclass(frozen=True)
class Answer:
    """One request's measurement (seconds from sending it)."""

    ttft: float
    latency: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    text: str
    sent: float = 0.0  # seconds from the start of its run


@dataclass
class Run:
    """A backend's answers at one concurrency level. `busy_seconds` is how long every editor
    had a request out (until the first ran out of sessions): the run's throughput is measured
    over that time, at the level's concurrency. The run's tail, where fewer editors are left,
    is one editor's sessions at a lower concurrency; it counts in `tokens_per_second_whole`."""

    backend: str
    concurrency: int
    seconds: float = 0.0
    busy_seconds: float | None = None
    requests: list[Request] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def busy_tokens(self) -> float:
        """Completion tokens streamed within `busy_seconds`: a request that straddles its end
        counts the share of its streaming time before it (tokens come at an even pace)."""
        end = self.seconds if self.busy_seconds is None else self.busy_seconds
        total = 0.0
        for answer in self.answers:
            first, last = answer.sent + answer.ttft, answer.sent + answer.latency
            if last <= end:
                total += answer.completion_tokens
            elif first < end:
                total += answer.completion_tokens * (end - first) / (last - first)
        return total

    def summary(self) -> dict[str, float]:
        ttft = [answer.ttft for answer in self.answers]
        latency = [answer.latency for answer in self.answers]
        prompt = sum(answer.prompt_tokens for answer in self.answers)
        completion = sum(answer.completion_tokens for answer in self.answers)
        return {
            "requests": len(self.answers),
            "seconds": self.seconds,
            "ttft_p50": float(np.percentile(ttft, 50)),
            "ttft_p95": float(np.percentile(ttft, 95)),
            "latency_p50": float(np.percentile(latency, 50)),
            "latency_p95": float(np.percentile(latency, 95)),
            "tokens_per_second": self.busy_tokens() / (self.busy_seconds or self.seconds),
            "tokens_per_second_whole": completion / self.seconds,
            "busy_seconds": self.busy_seconds or self.seconds,
            "requests_per_second": len(self.answers) / self.seconds,
            "prompt_tokens_mean": prompt / len(self.answers),
            "completion_tokens_mean": completion / len(self.answers),
            "prefix_cache_share": sum(a.cached_tokens for a in self.answers) / max(prompt, 1),
        }


# -- the server's side ---------------------------------------------------------------------------


def sse_data(line: str) -> str | None:
    """The data of one line of a server-sent event stream; None for what an EventSource skips
    (comments, blank lines, other fields). OpenAI's streams end with the data `[DONE]`."""
    if not line.startswith("data:"):
        return None
    return line.removeprefix("data:").strip()


def completion_body(request: Request, model: str, max_tokens: int) -> dict:
    """The /v1/completions body an editor plugin sends: OpenAI's fields (`suffix` asks for
    fill-in-the-middle, `user` names the editor), with zen-coder's `path` and `language`."""
    return {
        "model": model,
        "prompt": request.prefix,
        "suffix": request.suffix,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": request.client,
        "path": request.path,
        "language": request.language,
    }


class ServerBackend:
    """A running `zen-coder serve`, asked over HTTP and streamed. `name` says which backend it
    runs (NATIVE or BASELINE)."""

    def __init__(
        self, name: str, url: str, model: str, max_tokens: int, api_key: str | None = None
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.model = model
        self.max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self.client = httpx.AsyncClient(headers=headers, timeout=600, limits=limits)

    async def complete(self, request: Request) -> Answer:
        body = completion_body(request, self.model, self.max_tokens)
        started = time.perf_counter()
        first, text, usage = None, [], {}
        async with self.client.stream("POST", f"{self.url}/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                detail = (await reply.aread()).decode(errors="replace").strip()
                raise ZenCoderError(f"{self.url} answered {reply.status_code}: {detail[:300]}")
            async for line in reply.aiter_lines():
                data = sse_data(line)
                if data is None:
                    continue
                if data == DONE:
                    break
                payload = json.loads(data)
                for choice in payload.get("choices") or []:
                    if choice.get("text"):
                        first = first or time.perf_counter()
                        text.append(choice["text"])
                usage = payload.get("usage") or usage
        ended = time.perf_counter()
        details = usage.get("prompt_tokens_details") or {}
        return Answer(
            ttft=(first or ended) - started,
            latency=ended - started,
            prompt_tokens=usage.get("prompt_tokens", 0),
            cached_tokens=details.get("cached_tokens") or 0,
            completion_tokens=usage.get("completion_tokens", 0),
            text="".join(text),
        )

    async def close(self) -> None:
        await self.client.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command(model: Path, backend: str, port: int, slots: int, dtype: str | None) -> list[str]:
    """`zen-coder serve` as users run it, with a slot (a KV cache kept between requests) for each
    editor of the busiest level: fewer would evict an editor's prompt before its next keystroke.
    The limit on requests in flight per key is raised to match (no key: one caller)."""
    return [
        *(sys.executable, "-m", "zen_coder.cli", "serve", "--model", str(model)),
        *("--backend", backend, "--port", str(port), "--log-level", "warning"),
        *("--slots", str(slots), "--concurrent-per-key", str(slots)),
        *(("--dtype", dtype) if dtype else ()),
    ]


@contextmanager
def served(model: Path, backend: str, slots: int, dtype: str | None, log: Path) -> Iterator[str]:
    """`zen-coder serve` of `model` on `backend`, on localhost and a free port, in a process of
    its own (as users run it; its Python threads then never wait for this one's): yields its URL
    once /health answers, stops it at the end."""
    port = free_port()
    with log.open("w") as output:
        server = subprocess.Popen(
            serve_command(model, backend, port, slots, dtype),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_health(server, url, log)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=60)


def wait_for_health(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ZenCoderError(f"`zen-coder serve` exited with {server.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ZenCoderError(f"`zen-coder serve` did not answer {url}/health in time; see {log}")


def served_model(url: str, api_key: str | None) -> str:
    """The model id the server at `url` lists first on /v1/models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reply = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=30)
    reply.raise_for_status()
    return reply.json()["data"][0]["id"]


class ReusablePrompts:
    """How many of each request's prompt tokens a perfect prefix cache could serve: those it
    shares, from the start, with the last prompt of the same editor, the prompts built as the
    server builds them (its default budget within the model's context, no repository). A layout
    that puts the suffix after the prefix recomputes the suffix at every keystroke: this is the
    ceiling for the measured share, and `prompt_tokens` checks that the prompts here are the
    server's."""

    def __init__(self, native: Path, max_tokens: int) -> None:
        self.roles = read_tokenizer(native)
        self.format = PromptFormat.from_tokenizer(self.roles)
        defaults = ServerSettings()
        room = read_config(native).context_length - max_tokens - 1  # the server's start token
        tokens = min(defaults.context_tokens, defaults.max_prompt_tokens, room)
        self.budget = Budget(tokens, defaults.prefix_share, defaults.suffix_share)

    def ids(self, request: Request) -> list[int]:
        parts = PromptParts(
            prefix=request.prefix,
            suffix=request.suffix,
            path=request.path,
            language=canonical_language(request.language, request.path),
        )
        prompt = self.format.build(parts, self.budget, self._count)
        start = [] if self.roles.bos_id is None else [self.roles.bos_id]
        return start + prompt.ids(self.roles.tokenizer)

    def _count(self, text: str) -> int:
        return len(self.roles.tokenizer.encode(text, add_special_tokens=False))

    def of(self, session: Session) -> list[tuple[int, int]]:
        """(prompt tokens, reusable tokens) of each of `session`'s requests."""
        counts, last = [], []
        for request in session.requests:
            ids = self.ids(request)
            counts.append((len(ids), shared_start(last, ids)))
            last = ids
        return counts


def shared_start(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of `a` and `b`."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


# -- the replay ------------------------------------------------------------------------------------


async def replay(backend, sessions: list[Session], concurrency: int, realtime: bool) -> Run:
    """`concurrency` editors working through `sessions`, each sending a session's requests one
    after another (the next when the last answer is in, or with `realtime` not before its time
    on the typing clock)."""
    run = Run(backend.name, concurrency)
    waiting = deque(sessions)

    async def editor() -> None:
        while waiting:
            session = waiting.popleft()
            began = time.perf_counter()
            for request in session.requests:
                if realtime:
                    await asyncio.sleep(max(0.0, began + request.at - time.perf_counter()))
                sent = time.perf_counter() - started
                answer = await backend.complete(request)
                run.requests.append(request)
                run.answers.append(replace(answer, sent=sent))
        if run.busy_seconds is None:  # the first editor out of sessions: the level ends here
            run.busy_seconds = time.perf_counter() - started

    started = time.perf_counter()
    await asyncio.gather(*(editor() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - started
    return run


def split_levels(sessions: list[Session], workload: Workload) -> dict[int, list[Session]]:
    """Each level's own sessions, in order: `max(level, workload.sessions)` each."""
    levels, start = {}, 0
    for level in workload.levels:
        size = max(level, workload.sessions)
        levels[level] = sessions[start : start + size]
        start += size
    if start > len(sessions):
        raise ZenCoderError(
            f"the mined commits gave {len(sessions)} editing sessions, {start} are needed; "
            "lower --sessions or the concurrency levels"
        )
    return levels


# -- inputs: sessions and models -------------------------------------------------------------------


def mined_dataset(bundles: list[str]) -> Path:
    """The recent commits of the bundles' clones and a synthetic repository, mined once into the
    workspace (a rerun finds nothing new and takes a second)."""
    repos = [(name, bundle_repo(name)) for name in bundles]
    repos.append(("synthetic", synthetic_repo(SYNTHETIC_COMMITS)))
    specs = [
        RepoSpec(str(path), name=name, range=f"HEAD~{RECENT_COMMITS}..HEAD") for name, path in repos
    ]
    out = WORKSPACE / "mined"
    mine(specs, out, workers=os.cpu_count() or 1, salt=SALT)
    return out


def random_models(name: str, records: dict[str, list[dict]], dtype: torch.dtype) -> Path:
    """The preset `name` with random weights, as a native model folder (`native/`) and its
    Hugging Face export (`hf/`), with a tokenizer trained on the mined code; built once."""
    folder = WORKSPACE / f"model-{name}-{str(dtype).removeprefix('torch.')}"
    if (folder / "hf" / "config.json").exists():
        return folder
    work = folder.with_name(folder.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    config = replace(preset(name), n_languages=len(LANGUAGES) + 1, n_repos=1)
    texts = code_texts(records, TOKENIZER_TEXT_CHARS)
    save_tokenizer(
        train_tokenizer(texts, config.vocab_size), work / "tokenizer", config.context_length
    )
    torch.manual_seed(0)
    model = random_model(config, dtype)
    table = ["<unknown>", *LANGUAGES]
    save_model(
        work / "native", config, model.state_dict(), table, work / "tokenizer", repos=["<unknown>"]
    )
    export(model, work / "tokenizer", work / "hf")
    install_directory(work, folder)
    return folder


def random_model(config: ModelConfig, dtype: torch.dtype) -> ZenCoder:
    """A model of `config` drawn in `dtype` from the start: the small preset in float32 first
    would need 11 GB before its 5.6 GB in bfloat16."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return ZenCoder(config).eval()
    finally:
        torch.set_default_dtype(default)


def code_texts(records: dict[str, list[dict]], limit: int) -> list[str]:
    """Files as the mined commits left them, up to `limit` characters: the random model's
    tokenizer then splits the replayed code as a trained model's would."""
    texts, size = [], 0
    for rows in records.values():
        for row in rows:
            if row["new_content"] and size < limit:
                texts.append(row["new_content"])
                size += len(row["new_content"])
    return texts


def export_model(native: Path, out: Path) -> Path:
    """The Hugging Face export of a trained native model folder, in `out/hf`. The export cannot
    hold the card's techniques; `save_pretrained` warns when that changes the outputs."""
    return export(load_model(native), native, out / "hf")


def export(model: ZenCoder, tokenizer: Path, hf: Path) -> Path:
    """`model` saved with `save_pretrained` into `hf`, with the tokenizer files of the folder
    `tokenizer` and its BOS, EOS and pad tokens in config.json."""
    roles = read_tokenizer(tokenizer)
    token_ids = {"bos_token_id": roles.bos_id, "eos_token_id": roles.eos_id}
    save_pretrained(model, hf, token_ids=token_ids | {"pad_token_id": roles.pad_id})
    for file in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / file, hf / file)
    return hf


# -- the report ------------------------------------------------------------------------------------


def agreement(server: Run, baseline: Run) -> float:
    """The share of requests where the server's completion is the baseline's or the start of it
    (the server may cut a completion short at a line or a stop sequence): same model, same
    prompt, greedy, so anything else means the two did not compute the same thing."""
    theirs = {
        (r.session, r.index): a.text
        for r, a in zip(baseline.requests, baseline.answers, strict=True)
    }
    same = [
        theirs.get((r.session, r.index), "").startswith(a.text)
        for r, a in zip(server.requests, server.answers, strict=True)
    ]
    return sum(same) / max(len(same), 1)


def print_table(runs: list[Run]) -> None:
    print(
        f"\n{'backend':24}{'conc':>5}{'reqs':>6}{'ttft p50':>10}{'p95':>8}{'latency p50':>13}"
        f"{'p95':>8}{'tok/s':>8}{'whole':>7}{'prompt':>8}{'new':>6}{'cached':>8}"
    )
    for run in runs:
        s = run.summary()
        print(
            f"{run.backend:24}{run.concurrency:5d}{s['requests']:6d}"
            f"{s['ttft_p50'] * 1000:8.0f}ms{s['ttft_p95'] * 1000:6.0f}ms"
            f"{s['latency_p50'] * 1000:11.0f}ms{s['latency_p95'] * 1000:6.0f}ms"
            f"{s['tokens_per_second']:8.0f}{s['tokens_per_second_whole']:7.0f}"
            f"{s['prompt_tokens_mean']:8.0f}"
            f"{s['completion_tokens_mean']:6.0f}{s['prefix_cache_share']:8.0%}"
        )


Prompts = dict[tuple[int, int], tuple[int, int]]  # (session, index) -> (tokens, reusable)


def ratios(server: Run, baseline: Run, prompts: Prompts) -> dict[str, float]:
    """The native server's figures over the baseline's, its prefix-cache share with the ceiling
    the prompt layout allows (ReusablePrompts), and two checks that the comparison is fair: the
    share of requests whose prompt has the tokens ReusablePrompts built, and `agreement`."""
    ours, theirs = server.summary(), baseline.summary()
    built = [prompts[r.session, r.index] for r in server.requests]
    matching = [
        answer.prompt_tokens == tokens
        for answer, (tokens, _) in zip(server.answers, built, strict=True)
    ]
    return {
        "throughput": ours["tokens_per_second"] / theirs["tokens_per_second"],
        "throughput_whole": ours["tokens_per_second_whole"] / theirs["tokens_per_second_whole"],
        "latency_p50": ours["latency_p50"] / theirs["latency_p50"],
        "ttft_p50": ours["ttft_p50"] / theirs["ttft_p50"],
        "prefix_cache_share": ours["prefix_cache_share"],
        "reuse_ceiling": sum(reusable for _, reusable in built) / sum(t for t, _ in built),
        "prompts_match": sum(matching) / len(matching),
        "agreement": agreement(server, baseline),
    }


def print_ratios(table: dict[int, dict[str, float]], preset_name: str) -> None:
    print(f"\n{NATIVE} vs {BASELINE} (same server, same model, same requests):")
    for level, r in table.items():
        print(
            f"  concurrency {level:2d}: throughput {r['throughput']:5.2f}x "
            f"({r['throughput_whole']:.2f}x with the tail), "
            f"p50 latency {r['latency_p50']:5.2f}x, p50 time to first token {r['ttft_p50']:5.2f}x, "
            f"prefix cache {r['prefix_cache_share']:4.0%} of prompt tokens "
            f"(the layout allows {r['reuse_ceiling']:4.0%})"
        )
    worst = min(table.values(), key=lambda r: min(r["prompts_match"], r["agreement"]))
    print(
        f"  fairness: prompts as ReusablePrompts builds them in {worst['prompts_match']:.0%}, "
        f"native completion = baseline's (or its start) in {worst['agreement']:.0%} of requests "
        "(worst level)"
    )
    if TARGET_LEVEL in table:
        r = table[TARGET_LEVEL]
        checks = [
            (f"throughput >= {THROUGHPUT_TARGET:g}x", r["throughput"] >= THROUGHPUT_TARGET),
            (f"p50 latency <= {LATENCY_TARGET:g}x", r["latency_p50"] <= LATENCY_TARGET),
            (f"prefix reuse >= {REUSE_TARGET:.0%}", r["prefix_cache_share"] >= REUSE_TARGET),
        ]
        verdicts = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks)
        print(f"  targets ({preset_name}, concurrency {TARGET_LEVEL}): {verdicts}")


def plot(runs: list[Run], floor: float, path: Path, title: str) -> None:
    """Latency, time to first token and throughput against concurrency; `floor` is the
    median request's rate of `generate` alone (bare_generate), as a line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for backend, color in ((NATIVE, "tab:blue"), (BASELINE, "tab:gray")):
        backend_runs = [run for run in runs if run.backend == backend]
        levels = [run.concurrency for run in backend_runs]
        summaries = [run.summary() for run in backend_runs]
        for key, style in (("latency_p50", "o-"), ("latency_p95", "o--")):
            label = f"{backend}, {key.removeprefix('latency_')}"
            axes[0].plot(
                levels, [s[key] * 1000 for s in summaries], style, color=color, label=label
            )
        for key, style in (("ttft_p50", "o-"), ("ttft_p95", "o--")):
            label = f"{backend}, {key.removeprefix('ttft_')}"
            axes[1].plot(
                levels, [s[key] * 1000 for s in summaries], style, color=color, label=label
            )
        axes[2].plot(
            levels, [s["tokens_per_second"] for s in summaries], "o-", color=color, label=backend
        )
    axes[2].axhline(floor, linestyle=":", color="tab:gray", label="generate alone, no server")
    for axis, label in zip(
        axes,
        ("completion latency (ms)", "time to first token (ms)", "completion tokens/s"),
        strict=True,
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({run.concurrency for run in runs}))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("concurrent editors")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    figure.suptitle(title)
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)


def bare_generate(hf: Path, dtype: str | None, run: Run, reusable: ReusablePrompts) -> Run:
    """transformers' `generate` alone, in this process, one request after another, on the
    prompt ids of `run`'s requests (the server's prompts) and forced to the number of tokens the
    server generated for each: the floor under the baseline server's latency, so a reader can
    tell the engine's gain from the baseline server's own overhead (streaming, cut-off, HTTP)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    options = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, **options).eval()
    pad = reusable.roles.pad_id
    first = max(run.answers[0].completion_tokens, 1)
    timed(model, reusable.ids(run.requests[0]), first, pad)  # a warm-up, as the servers had
    bare = Run("generate alone", 1)
    for request, answer in zip(run.requests, run.answers, strict=True):
        ids = reusable.ids(request)
        tokens = max(answer.completion_tokens, 1)
        seconds = timed(model, ids, tokens, pad)
        bare.requests.append(request)
        bare.answers.append(Answer(seconds, seconds, len(ids), 0, tokens, ""))
        bare.seconds += seconds
    return bare


def timed(model, ids: list[int], tokens: int, pad: int) -> float:
    """Seconds `model.generate` takes to add exactly `tokens` tokens to `ids`, greedily."""
    prompt = torch.tensor([ids])
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    return time.perf_counter() - started


# -- main ------------------------------------------------------------------------------------------


async def measure(
    backends, levels: dict[int, list[Session]], warmup: Session, realtime: bool
) -> list[Run]:
    """Every backend at every level, the backends in turn at each level (on a shared machine the
    load drifts: the two runs compared are then minutes apart at most, not the whole benchmark);
    each backend first answers one session unmeasured (lazy initialisation, first allocations).
    """
    for backend in backends:
        await replay(backend, [warmup], 1, realtime=False)
    runs = []
    for level, sessions in levels.items():
        for backend in backends:
            run = await replay(backend, sessions, level, realtime)
            runs.append(run)
            s = run.summary()
            print(
                f"  {backend.name}, concurrency {level}: {s['requests']} requests in "
                f"{s['seconds']:.1f} s",
                flush=True,
            )
    return runs


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument(
        "--model", type=Path, help="a trained native model folder (default: random)"
    )
    parser.add_argument("--server", help="URL of a running `zen-coder serve` of --model")
    parser.add_argument("--api-key", help="its API key")
    parser.add_argument("--levels", type=int, nargs="+", help="concurrency levels")
    parser.add_argument("--sessions", type=int, help="sessions per level (at least the level)")
    parser.add_argument("--requests-per-session", type=int, help="requests of each session")
    parser.add_argument("--max-tokens", type=int, help="tokens per completion")
    parser.add_argument("--realtime", action="store_true", help="also wait for the typing clock")
    parser.add_argument(
        "--repos", nargs="*", metavar="NAME", help="bundles of ../shared/repos (default: all)"
    )
    parser.add_argument("--out", type=Path, default=WORKSPACE / "results")
    return parser.parse_args()


def workload_of(args: argparse.Namespace) -> Workload:
    base = WORKLOADS[args.preset]
    return Workload(
        levels=tuple(args.levels or base.levels),
        sessions=args.sessions or base.sessions,
        requests_per_session=args.requests_per_session or base.requests_per_session,
        max_tokens=args.max_tokens or base.max_tokens,
    )


def model_folders(args: argparse.Namespace, records: dict[str, list[dict]]) -> tuple[Path, Path]:
    """(native model folder, its Hugging Face export)."""
    if args.model:
        return args.model.resolve(), export_model(args.model.resolve(), args.out)
    folder = random_models(args.preset, records, getattr(torch, DTYPES.get(args.preset, "float32")))
    return folder / "native", folder / "hf"


def level_sessions(
    records: dict[str, list[dict]], native: Path, workload: Workload
) -> tuple[Session, dict[int, list[Session]]]:
    """A warm-up session and each level's sessions, in windows that leave the model room for
    the template, the typed text and the completion."""
    tokenizer = read_tokenizer(native).tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    room = read_config(native).context_length - workload.max_tokens
    window = Window(prefix_tokens=min(256, room // 2), suffix_tokens=min(48, room // 8))
    needed = sum(max(level, workload.sessions) for level in workload.levels) + 1
    sessions = build_sessions(
        records, count, limit=needed, window=window, requests=workload.requests_per_session
    )
    return sessions[0], split_levels(sessions[1:], workload)


def run_both(
    args: argparse.Namespace,
    native: Path,
    hf: Path,
    workload: Workload,
    warmup: Session,
    levels: dict[int, list[Session]],
) -> list[Run]:
    """The native server (started here, or --server) and the baseline server, one after the
    other over the same sessions."""
    slots, dtype = max(workload.levels), DTYPES.get(args.preset) if not args.model else None
    with ExitStack() as servers:
        native_url = args.server or servers.enter_context(
            served(native, "native", slots, dtype, args.out / "native.log")
        )
        baseline_url = servers.enter_context(
            served(hf, "huggingface", slots, dtype, args.out / "huggingface.log")
        )
        backends = [
            ServerBackend(name, url, served_model(url, key), workload.max_tokens, key)
            for name, url, key in (
                (NATIVE, native_url, args.api_key),
                (BASELINE, baseline_url, None),
            )
        ]

        async def measure_all() -> list[Run]:
            try:
                return await measure(backends, levels, warmup, args.realtime)
            finally:
                for backend in backends:
                    await backend.close()

        return asyncio.run(measure_all())


def report(
    args: argparse.Namespace, workload: Workload, runs: list[Run], prompts: Prompts, bare: Run
) -> None:
    print_table(runs)
    table = {level: ratios(*pair_at(runs, level), prompts) for level in workload.levels}
    print_ratios(table, args.preset)
    floor = bare.summary()
    # Its median request's rate: one request at a time, a spike of the machine's load in one
    # request would otherwise count against the floor (it is the stricter baseline: keep it fast).
    rate = floor["completion_tokens_mean"] / floor["latency_p50"]
    floor["median_tokens_per_second"] = rate
    gains = [
        f"{pair_at(runs, level)[0].summary()['tokens_per_second'] / rate:.2f}x at {level}"
        for level in workload.levels
    ]
    print(
        f"  {bare.backend} (transformers in this process, no server, one at a time, the same "
        f"prompts and token counts): p50 {floor['latency_p50'] * 1000:.0f} ms, "
        f"{rate:.0f} tokens/s at that; the native engine's throughput is "
        f"{', '.join(gains)} of that"
    )
    if TARGET_LEVEL in workload.levels:
        alone = pair_at(runs, TARGET_LEVEL)[0].summary()["tokens_per_second"] / rate
        verdict = "met" if alone >= THROUGHPUT_TARGET else "MISSED"
        print(f"  throughput >= {THROUGHPUT_TARGET:g}x generate alone at {TARGET_LEVEL}: {verdict}")
    results = {
        "preset": args.preset,
        "model": "trained" if args.model else "random",
        "workload": asdict(workload),
        "cpus": os.cpu_count(),
        "runs": [{"backend": r.backend, "concurrency": r.concurrency, **r.summary()} for r in runs],
        "ratios": {str(level): figures for level, figures in table.items()},
        "generate_alone": floor,
    }
    write_json_atomic(args.out / "results.json", results, indent=2)
    figure = args.out / "serve-latency.png"
    title = f"{args.preset} preset, {os.cpu_count()} CPUs: zen-coder serve, native vs transformers"
    plot(runs, rate, figure, title)
    print(f"\nresults: {args.out / 'results.json'}\nplot: {figure}")


def pair_at(runs: list[Run], level: int) -> tuple[Run, Run]:
    """(native run, baseline run) at concurrency `level`."""
    at = {run.backend: run for run in runs if run.concurrency == level}
    return at[NATIVE], at[BASELINE]


def inputs(
    args: argparse.Namespace, workload: Workload
) -> tuple[Path, Path, Session, dict[int, list[Session]]]:
    """(native model, its export, the warm-up session, each level's sessions). The mined records
    are dropped here: millions of Python objects would make the garbage collector pause this
    process for seconds during the measurements (measured: 4 s in one `generate`)."""
    bundles = available_bundles() if args.repos is None else args.repos
    records = mined_records(mined_dataset(bundles))
    native, hf = model_folders(args, records)
    warmup, levels = level_sessions(records, native, workload)
    print(
        f"{args.preset} model ({'trained' if args.model else 'random weights'}), "
        f"{sum(map(len, levels.values()))} editing sessions from {', '.join(sorted(records))}: "
        f"{sum(len(s.requests) for group in levels.values() for s in group)} requests per "
        f"backend, up to {workload.max_tokens} tokens each; {os.cpu_count()} CPUs, shared with "
        "whatever else runs (timings are noisy)",
        flush=True,
    )
    return native, hf, warmup, levels


def main() -> None:
    args = parse_arguments()
    started = time.perf_counter()
    workload = workload_of(args)
    args.out.mkdir(parents=True, exist_ok=True)
    native, hf, warmup, levels = inputs(args, workload)
    reusable = ReusablePrompts(native, workload.max_tokens)
    prompts = {
        (session.number, index): counts
        for group in levels.values()
        for session in group
        for index, counts in enumerate(reusable.of(session))
    }
    gc.collect()
    gc.freeze()  # what is left lives to the end: no collection needs to look at it again
    runs = run_both(args, native, hf, workload, warmup, levels)
    dtype = None if args.model else DTYPES.get(args.preset)
    bare = bare_generate(hf, dtype, pair_at(runs, min(levels))[1], reusable)
    report(args, workload, runs, prompts, bare)
    print(f"benchmark finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except ZenCoderError as error:
        sys.exit(f"serve_latency: {error}")
