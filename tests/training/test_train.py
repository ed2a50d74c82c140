"""`zen-coder train` on prepared data from a real git history: loss, checkpoints, resume, export."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zen_coder.data.loader import open_split, spread_rows
from zen_coder.errors import ZenCoderError
from zen_coder.model.folder import load_model, read_languages, read_repos, save_model
from zen_coder.model.model import ZenCoder
from zen_coder.training.config import TrainConfig, load_run_config
from zen_coder.training.controls import Controls
from zen_coder.training.metrics import read_metrics
from zen_coder.training.optim import learning_rate_factor, parameter_groups
from zen_coder.training.parallelize import init_distributed
from zen_coder.training.trainer import train, validation_loss

ROOT = Path(__file__).resolve().parents[2]
MODEL = [
    "model.n_layers=2",
    "model.d_model=64",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.n_experts=4",
    "model.experts_per_token=2",
    "model.expert_dim=32",
    # The card's techniques are off by default (measured not to help yet); training runs them.
    "model.repo_embeddings=true",
    "model.temporal_attention=true",
    "model.language_routing=true",
    "model.contrastive_loss=true",
]
FAST = [
    *MODEL,
    "train.global_batch=8",
    "train.micro_batch=4",
    "train.lr=0.003",
    "train.warmup_steps=2",
    "train.eval_every=4",
    "train.eval_batches=4",
    "train.log_every=1",
    "train.checkpoint_every=4",
]


def configs(*extra: str):
    return load_run_config(ROOT / "configs" / "tiny.toml", [*FAST, *extra])


def losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_metrics(run) if e["kind"] == "train"}


def assert_same_weights(run: Path, reference: Path) -> None:
    """The two runs exported bit for bit the same model (a loss can hide a small difference)."""
    got = load_file(run / "model" / "model.safetensors")
    expected = load_file(reference / "model" / "model.safetensors")
    assert got.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []


def test_training_lowers_the_loss_and_exports(data, tmp_path):
    out = tmp_path / "run"
    report = train(data, out, *configs("train.steps=12"))
    assert report.steps == 12 and report.tokens == 12 * 8 * 64
    assert report.validation["loss"] < report.initial_validation["loss"] - 0.5
    assert set(report.validation["by_language"]) == {"Python"}
    events = read_metrics(out)
    assert {e["kind"] for e in events} == {"history", "train", "validation"}
    # One repository: said at the start, and the contrastive loss stays 0.
    assert report.history["repositories"] == 1 and not report.history["contrastive_negatives"]
    assert any("no negatives" in warning for warning in report.warnings)
    assert all(e["contrastive"] == 0 for e in events if e["kind"] == "train")
    train_events = [e for e in events if e["kind"] == "train"]
    assert {"loss", "lm", "balance", "z", "contrastive", "lr", "grad_norm"} <= set(train_events[0])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list((out / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints
    model = load_model(out / "model")
    vocabulary = json.loads((data / "manifest.json").read_text())["vocab_size"]
    assert model.config.vocab_size == vocabulary and model.config.n_repos == 2
    assert (out / "model" / "tokenizer.json").exists()
    assert read_languages(out / "model") == json.loads((data / "languages.json").read_text())
    # The repository table in the ids the model was trained with: the prepared data's.
    assert read_repos(out / "model") == json.loads((data / "repos.json").read_text())
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 12
    transformers = pytest.importorskip("transformers")
    exported = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    tokens = torch.randint(0, vocabulary, (1, 16))
    # Without side channels our model is what the export holds: the techniques stay silent.
    assert torch.allclose(exported(tokens).logits, model(tokens).logits, atol=1e-4)


def test_a_control_run_on_two_repositories_mixes_them_and_records_its_settings(
    mixed_data, tmp_path
):
    """A time-shuffled control with two repositories per micro-batch: it trains, says what the
    techniques had, records both settings, and every micro-batch holds both repositories. A run
    with shuffled repositories instead starts from the same weights on the same batches: its
    first loss differs by the repository control alone, and its validation applies it too.
    (Broken by hand: a training dataset without repos_per_batch gets a micro-batch of one
    repository in the first step; without the controls in `_accumulate`, the first
    losses agree; without them in `validation_loss`, the run's validation is the one without.)"""
    settings = ("train.steps=4", "train.repos_per_batch=2", "model.repo_dropout=0")
    time_out, repo_out = tmp_path / "time", tmp_path / "repo"
    report = train(mixed_data, time_out, *configs(*settings, "train.shuffle=time"))
    assert report.steps == 4 and report.validation["loss"] < report.initial_validation["loss"]
    assert report.history == {
        "repositories": 2,
        "contrastive_negatives": True,
        "negatives_in": "every micro-batch",
        "repos_per_batch": 2,
        "shuffle": ["time"],
    }
    saved = json.loads((time_out / "config.json").read_text())["train"]
    assert (saved["shuffle"], saved["repos_per_batch"]) == (["time"], 2)
    events = read_metrics(time_out)
    assert [e for e in events if e["kind"] == "history"] == [
        {"kind": "history", "step": 0, **report.history}
    ]
    # Every micro-batch of the run held both repositories (averaged per step: 2 means all).
    mixed = [e["repositories"] for e in events if e["kind"] == "train"]
    assert mixed == [2.0] * 4
    assert sum(e["contrastive"] for e in events if e["kind"] == "train") > 0

    repo_settings = configs(*settings, "train.shuffle=repo")
    repo_report = train(mixed_data, repo_out, *repo_settings)
    # The technique tables start at zero, so the first step's language-model loss is the same;
    # the contrastive loss groups the documents by their (shuffled) repositories.
    assert losses(time_out)[1] != losses(repo_out)[1]
    # The trained model's validation, with the repository control and without: the run's own
    # is the one with it.
    manifest = json.loads((mixed_data / "manifest.json").read_text())
    score = functools.partial(
        validation_loss,
        load_model(repo_out / "model"),
        mixed_data,
        repo_settings[1],
        init_distributed(),
        manifest["special_tokens"]["<|pad|>"],
        json.loads((mixed_data / "languages.json").read_text()),
    )
    controls = Controls.for_data(mixed_data, ("repo",), seed=0)
    assert score(controls)["loss"] == pytest.approx(repo_report.validation["loss"], abs=1e-6)
    assert abs(score(None)["loss"] - repo_report.validation["loss"]) > 1e-4


def test_a_compiled_bfloat16_run_trains_and_exports_plain_weights(data, tmp_path):
    out = tmp_path / "run"
    settings = configs("train.steps=8", "train.dtype=bfloat16", "train.compile=true")
    report = train(data, out, *settings)
    assert report.validation["loss"] < report.initial_validation["loss"] - 0.5
    model = load_model(out / "model")  # compiling left the parameter names alone
    assert model(torch.randint(0, model.config.vocab_size, (1, 8))).logits.isfinite().all()


def test_fine_tuning_a_model_folder_keeps_each_languages_routing_rows(data, tmp_path):
    """A base trained with another language table (the mining stage's list reordered since):
    each language keeps its routing rows under the data's id, one the base never saw starts at
    zero. (Broken by hand, loading the base's rows by id fails on the first language.)"""
    table = json.loads((data / "languages.json").read_text())
    base_table = [table[0], *reversed(table[2:]), "Ada"]  # no Python, and one the data lacks
    manifest = json.loads((data / "manifest.json").read_text())
    model_config, _ = configs()
    base_config = dataclasses.replace(
        model_config,
        vocab_size=manifest["vocab_size"],
        context_length=manifest["context_length"],
        n_repos=len(json.loads((data / "repos.json").read_text())),
        n_languages=len(base_table),
    )
    torch.manual_seed(0)
    base = ZenCoder(base_config)
    with torch.no_grad():
        for block in base.blocks:
            block.moe.language.normal_()
    repos = json.loads((data / "repos.json").read_text())
    weights = base.state_dict()
    save_model(tmp_path / "base", base_config, weights, base_table, data, repos=repos)
    out = tmp_path / "run"
    train(data, out, *configs("train.steps=1", f"train.init_from={tmp_path / 'base'}"))
    assert read_languages(out / "model") == table
    tuned = load_model(out / "model")
    for block, before in zip(tuned.blocks, base.blocks, strict=True):
        rows, base_rows = block.moe.language.detach(), before.moe.language.detach()
        # One step of AdamW at the warmup's learning rate moves a value by about 0.002.
        for name in table[2:]:
            expected = base_rows[base_table.index(name)]
            assert torch.allclose(rows[table.index(name)], expected, atol=0.01), name
        assert rows[table.index("Python")].abs().max() < 0.01


def test_resuming_from_a_checkpoint_reaches_the_same_losses(data, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(data, whole, *configs("train.steps=8"))
    # The run as it stood after step 4: its config and its step-4 checkpoint.
    (resumed / "checkpoints").mkdir(parents=True)
    # As a run started before zen-coder had two of today's settings wrote it: they ran with
    # their defaults, so the run resumes (without the defaults, "other settings" refused it).
    effective = json.loads((whole / "config.json").read_text())
    del effective["model"]["qk_norm"], effective["train"]["lora"]
    (resumed / "config.json").write_text(json.dumps(effective))
    step_4 = whole / "checkpoints" / "step-000000004"
    shutil.copytree(step_4, resumed / "checkpoints" / step_4.name)
    report = train(data, resumed, *configs("train.steps=8"))
    assert report.resumed_from == 4
    assert losses(resumed) == {step: loss for step, loss in losses(whole).items() if step > 4}
    assert_same_weights(resumed, whole)


def test_a_killed_run_resumes_exactly(data, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train(data, whole, *configs("train.steps=12", "train.checkpoint_every=2"))
    arguments = ["--data", str(data), "--out", str(killed), "--quiet"]
    arguments += ["--config", str(ROOT / "configs" / "tiny.toml")]
    for setting in [*FAST, "train.steps=12", "train.checkpoint_every=2"]:
        arguments += ["--set", setting]
    command = [sys.executable, "-m", "zen_coder.training", *arguments]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((killed / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(process.stderr.read().decode())
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(killed) == losses(whole)
    assert_same_weights(killed, whole)


def test_non_finite_steps_are_skipped_then_stop_the_run(data, tmp_path):
    out = tmp_path / "run"
    # Keeping no checkpoint: a run that stops short still keeps the one to resume from.
    settings = ["train.lr=1e30", "train.max_bad_steps=2", "train.keep_checkpoints=0"]
    with pytest.raises(ZenCoderError, match="training diverged: 3 non-finite steps in a row"):
        train(data, out, *configs("train.steps=20", *settings))
    assert len(list((out / "checkpoints").glob("step-*"))) == 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["kind"] == "skipped" for line in lines) == 3


def test_keeping_no_checkpoints_removes_them_once_the_run_is_done(data, tmp_path):
    out = tmp_path / "run"
    settings = configs("train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=0")
    report = train(data, out, *settings)
    assert report.model_dir == out / "model" and (out / "model" / "model.safetensors").exists()
    assert list((out / "checkpoints").iterdir()) == []
    # Nothing to resume from: a second start would train it all again.
    with pytest.raises(ZenCoderError, match="holds a finished run and no checkpoint"):
        train(data, out, *settings)


def test_a_run_folder_resumes_only_with_its_settings(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, *configs("train.steps=2"))
    with pytest.raises(ZenCoderError, match=r"other settings \(train.lr\)"):
        train(data, out, *configs("train.steps=4", "train.lr=0.01"))
    # A run from before repos_per_batch existed shuffled plainly: resuming it with the mixing
    # default would change its data order mid-epoch.
    effective = json.loads((out / "config.json").read_text())
    del effective["train"]["repos_per_batch"]
    (out / "config.json").write_text(json.dumps(effective))
    with pytest.raises(ZenCoderError, match=r"other settings \(train.repos_per_batch\)"):
        train(data, out, *configs("train.steps=4"))
    with pytest.raises(ZenCoderError, match="not prepared data"):
        train(tmp_path / "nothing", tmp_path / "other", *configs())


def test_recipes_and_overrides():
    model, config = load_run_config(ROOT / "configs" / "zen-coder-70b.toml")
    assert (model.d_model, model.n_layers, model.n_experts, model.experts_per_token) == (
        8192,
        80,
        16,
        4,
    )
    assert (config.lr, config.warmup_steps, config.steps) == (2e-5, 10_000, 500_000)
    assert (config.beta1, config.beta2, config.weight_decay, config.grad_clip) == (
        0.9,
        0.999,
        0.01,
        1.0,
    )
    assert config.dtype == "bfloat16" and config.global_batch == 256
    model, config = load_run_config(None, ["lr=0.5", "model.n_layers=3"])
    assert config.lr == 0.5 and model.n_layers == 3
    with pytest.raises(ZenCoderError, match=r"the section must be model, train or train\.lora"):
        load_run_config(None, ["optimizer.lr=1"])
    with pytest.raises(ZenCoderError, match="global_batch must be a multiple of micro_batch"):
        TrainConfig(global_batch=10, micro_batch=4)
    with pytest.raises(ZenCoderError, match="compile needs dtype bfloat16"):
        TrainConfig(compile=True)
    with pytest.raises(ZenCoderError, match="keep_checkpoints must be 0 or more"):
        TrainConfig(keep_checkpoints=-1)
    with pytest.raises(ZenCoderError, match="checkpoint_every must be at least 1"):
        TrainConfig(checkpoint_every=0)


def test_schedule_and_weight_decay_groups():
    config = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    factors = [learning_rate_factor(step, config) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.55) and factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    from zen_coder.model.model import ZenCoder

    model = ZenCoder(configs()[0])
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} >= {"blocks.0.attention.q.weight", "head.weight"}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"embed.weight", "repo.weight", "norm.weight", "blocks.0.moe.language"} <= skipped


def test_validation_scores_sequences_spread_over_the_whole_split(mixed_data):
    """The shuffle buffer mixes only nearby documents, so a split's first sequences may hold one
    repository: validation scores sequences spread over the whole split. Here the first four
    sequences are Python alone and four spread ones hold Go too. (Broken by hand: scoring the
    first `eval_batches` micro-batches scores Python alone.)"""
    model_config, train_config = configs("train.eval_batches=1", "train.micro_batch=4")
    manifest = json.loads((mixed_data / "manifest.json").read_text())
    languages = json.loads((mixed_data / "languages.json").read_text())
    model_config = dataclasses.replace(
        model_config,
        vocab_size=manifest["vocab_size"],
        n_languages=len(languages),
        n_repos=len(json.loads((mixed_data / "repos.json").read_text())),
    )
    language = np.asarray(open_split(mixed_data, "validation")["language"])
    rows = spread_rows(len(language), 4)

    def named(ids: np.ndarray) -> list[str]:
        return sorted(languages[i] for i in np.unique(ids[ids > 0]))

    assert named(language[:4]) == ["Python"] and named(language[rows]) == ["Go", "Python"]
    scores = validation_loss(
        ZenCoder(model_config),
        mixed_data,
        train_config,
        init_distributed(),
        manifest["special_tokens"]["<|pad|>"],
        languages,
    )
    assert sorted(scores["by_language"]) == ["Go", "Python"]
    assert spread_rows(10, 3).tolist() == [0, 4, 9] and spread_rows(3, 5).tolist() == [0, 1, 2]
