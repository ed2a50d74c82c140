"""LoRA (`[train.lora]`): adapters on a frozen base, checkpoints of the adapters alone, merged on
export, under FSDP2 as in one process. The base is a zen-coder model folder with random weights
sized for the prepared data of a real git history; the runs are `zen-coder train` itself.

Each comparison was broken once by hand and fails so: B initialized at random (std 0.02) instead
of zero, the untrained validation loss differs by 2.7e-3 (equality expected); the merge without
its alpha / rank factor, the exported logits are off by 0.14 (tolerance 1e-5; 0.52 in the merge
alone); the embeddings left trainable, the frozen embedding moves and base tensors appear in
the checkpoint; checkpoints of every parameter, base tensors appear in them; the adapters left
out of the checkpoint, the resumed losses differ by 0.07 from step 5 on; the adapters frozen, the
adapters-only run has nothing to train; and both data-parallel ranks reading rank 0's share of
the batch, the first loss is off by 3.3e-3 (tolerance 6e-5; the layouts agree exactly).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from tests.model.compare import relative_error
from tests.test_cli import assert_one_line_error, zen_coder
from tests.training.test_parallel_train import fixed_batch
from tests.training.test_train import FAST, ROOT, configs, losses
from zen_coder.errors import ZenCoderError
from zen_coder.model.folder import load_model, save_model
from zen_coder.model.model import ZenCoder
from zen_coder.training.checkpoint import RESTORE, TRAINED
from zen_coder.training.config import LoraConfig, load_run_config
from zen_coder.training.lora import apply_lora, is_adapter, merge_weights, trainable_kind
from zen_coder.training.trainer import low_precision, train

RANK, ALPHA = 4, 8.0
# No repository dropout: each data-parallel rank draws its own, so the FSDP2 run would differ.
RECIPE = ["train.steps=8", "model.repo_dropout=0"]
LORA = [f"train.lora.rank={RANK}", f"train.lora.alpha={ALPHA}"]
LOSS_TOLERANCE, WEIGHT_TOLERANCE = 1e-5, 1e-2


def run_config(base: Path, *extra: str):
    return configs(*RECIPE, f"train.init_from={base}", *extra)


@pytest.fixture(scope="module")
def base(data, tmp_path_factory) -> Path:
    """A zen-coder model folder with random weights and the data's vocabulary and tables."""
    manifest = json.loads((data / "manifest.json").read_text())
    model_config, _ = configs(*RECIPE)
    config = dataclasses.replace(
        model_config,
        vocab_size=manifest["vocab_size"],
        context_length=manifest["context_length"],
        n_repos=len(json.loads((data / "repos.json").read_text())),
        n_languages=len(json.loads((data / "languages.json").read_text())),
    )
    torch.manual_seed(0)
    model = ZenCoder(config)
    languages = json.loads((data / "languages.json").read_text())
    folder = tmp_path_factory.mktemp("base") / "model"
    repos = json.loads((data / "repos.json").read_text())
    save_model(folder, config, model.state_dict(), languages, tokenizer=data, repos=repos)
    return folder


@pytest.fixture(scope="module")
def lora_run(data, base, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("lora") / "run"
    return out, train(data, out, *run_config(base, *LORA))


@pytest.fixture(scope="module")
def full_run(data, base, tmp_path_factory) -> tuple[Path, object]:
    """The same fine-tuning with every parameter training."""
    out = tmp_path_factory.mktemp("full") / "run"
    return out, train(data, out, *run_config(base))


def adapted_model(base: Path, checkpoint: Path) -> ZenCoder:
    """The LoRA model as the run left it: the base, adapted, with the checkpoint's tensors."""
    model = apply_lora(load_model(base), LoraConfig(rank=RANK, alpha=ALPHA))
    state = get_model_state_dict(model, options=TRAINED)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # it is
        dcp.load(
            {"run": {"model": state}},
            checkpoint_id=checkpoint,
            planner=DefaultLoadPlanner(allow_partial_load=True),
        )
    set_model_state_dict(model, state, options=RESTORE)
    return model.eval()


def checkpoint_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def test_recipes_set_lora_and_bad_settings_are_one_line_errors(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[train]\ninit_from = "base"\n\n[train.lora]\nrank = 16\nalpha = 32\ndropout = 0.05\n'
        'targets = ["q", "v", "w1"]\n'
    )
    _, config = load_run_config(recipe)
    assert config.lora == LoraConfig(rank=16, alpha=32.0, dropout=0.05, targets=("q", "v", "w1"))
    _, config = load_run_config(recipe, ["train.lora.rank=8", "train.lora.targets=o,w2"])
    assert (config.lora.rank, config.lora.targets, config.lora.scale) == (8, ("o", "w2"), 4.0)
    assert config.to_dict()["lora"]["targets"] == ["o", "w2"]  # as config.json reads back
    _, config = load_run_config(None)
    assert not config.lora.enabled  # LoRA is off by default
    bad = {
        "train.lora.rank=-1": "rank must be 0 (no LoRA) or more",
        "train.lora.targets=q,gate": "targets has unknown 'gate'; choose among q, k, v, o, w1",
        "train.lora.trainable=heads": "trainable has unknown 'heads'",
        "train.lora.dropout=1": "dropout must be at least 0 and below 1",
        "train.lora.alpha=0": "alpha must be more than 0",
        "train.lora.targets=": "targets is empty",
        "train.lora.ranks=4": "unknown train.lora setting 'ranks'",
        "train.tensor_parallel=2": "train.lora does not work with tensor_parallel > 1",
    }
    for setting, message in bad.items():
        with pytest.raises(ZenCoderError, match=re.escape(message)):
            load_run_config(recipe, [setting])
    with pytest.raises(
        ZenCoderError, match=r"train\.lora adapts a base model: set train\.init_from"
    ):
        load_run_config(None, ["train.lora.rank=4"])


def test_zen_coder_train_says_what_is_wrong_in_one_line(tmp_path):
    result = zen_coder(
        "train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
        "--set", "train.init_from=base", "--set", "train.lora.rank=8",
        "--set", "train.lora.targets=q,gate",
    )  # fmt: skip
    message = "train.lora setting targets has unknown 'gate'; choose among q, k, v, o, w1, w2, w3"
    assert_one_line_error(result, 2, message)


def test_adapters_are_stacked_per_expert_and_only_what_trains_has_gradients():
    model_config, _ = configs()
    model = apply_lora(ZenCoder(model_config), LoraConfig(rank=RANK, targets=("q", "w1", "w2")))
    E, D, F = model_config.n_experts, model_config.d_model, model_config.expert_dim
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    assert shapes["blocks.0.attention.q.lora.weight.a"] == (RANK, D)
    assert shapes["blocks.0.attention.q.lora.weight.b"] == (D, RANK)
    assert shapes["blocks.0.moe.experts.lora.w1.a"] == (E, RANK, D)
    assert shapes["blocks.0.moe.experts.lora.w1.b"] == (E, F, RANK)
    assert shapes["blocks.0.moe.experts.lora.w2.a"] == (E, RANK, F)
    assert shapes["blocks.0.moe.experts.lora.w2.b"] == (E, D, RANK)
    trained = {name for name in shapes if not is_adapter(name)}
    # The router and the technique tables train; the rest of the base is frozen.
    assert trained == {
        "repo.weight",
        "projection.weight",
        *(f"blocks.{i}.moe.router.weight" for i in range(model_config.n_layers)),
        *(f"blocks.{i}.moe.language" for i in range(model_config.n_layers)),
        *(f"blocks.{i}.attention.temporal.weight" for i in range(model_config.n_layers)),
    }
    assert not any(".k.lora" in name or "w3" in name for name in shapes)


def test_adapter_dropout_acts_in_training_only():
    model_config, _ = configs()
    torch.manual_seed(0)
    model = apply_lora(ZenCoder(model_config), LoraConfig(rank=RANK, dropout=0.5))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".b"):
                parameter.normal_(std=0.1)
    tokens = torch.randint(0, model_config.vocab_size, (2, 16))
    first, second = model(tokens).logits, model(tokens).logits
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(tokens).logits, model(tokens).logits)


def test_the_adapted_model_starts_as_the_base(lora_run, full_run):
    """B starts at zero: before any step the LoRA run computes the base's losses exactly."""
    (lora_out, lora_report), (full_out, full_report) = lora_run, full_run
    assert lora_report.initial_validation == full_report.initial_validation
    assert losses(lora_out)[1] == losses(full_out)[1]


def test_training_the_adapters_alone_lowers_the_loss(data, base, tmp_path):
    """Nothing but the adapters trains (the router and technique tables lower the loss too)."""
    settings = run_config(base, *LORA, "train.lora.trainable=", "train.lr=0.01")
    assert settings[1].lora.trainable == ()
    report = train(data, tmp_path / "run", *settings)
    assert report.validation["loss"] < report.initial_validation["loss"] - 0.1


def test_the_base_stays_frozen_and_the_export_is_merged(lora_run, base):
    """What the adapters do not touch is the base's bit for bit; every adapted weight is the
    base's plus s B A; the exported folders hold no adapter tensors."""
    out, _ = lora_run
    exported = load_file(out / "model" / "model.safetensors")
    before = load_file(base / "model.safetensors")
    assert exported.keys() == before.keys()
    lora = adapted_model(base, out / "checkpoints" / "step-000000008")
    adapters = {name: p.detach() for name, p in lora.named_parameters() if is_adapter(name)}
    for name in ("embed.weight", "head.weight", "norm.weight", "blocks.1.moe_norm.weight"):
        assert torch.equal(exported[name], before[name]), name
    assert not torch.equal(
        exported["blocks.0.moe.router.weight"], before["blocks.0.moe.router.weight"]
    )
    for name in ("blocks.0.attention.q.weight", "blocks.1.moe.experts.w2"):
        module, _, weight = name.rpartition(".")
        a, b = adapters[f"{module}.lora.{weight}.a"], adapters[f"{module}.lora.{weight}.b"]
        assert b.abs().max() > 0  # the adapter trained
        expected = before[name] + ALPHA / RANK * (b @ a)
        assert torch.allclose(exported[name], expected, atol=1e-6), name
    hf = load_file(out / "hf" / "model.safetensors")
    assert not [name for name in hf if "lora" in name]


def test_the_exported_model_computes_what_the_adapted_model_did(lora_run, base):
    out, _ = lora_run
    lora = adapted_model(base, out / "checkpoints" / "step-000000008")
    exported = load_model(out / "model")
    batch = fixed_batch(exported.config.vocab_size)
    with torch.no_grad():
        expected, got = lora(**batch).logits, exported(**batch).logits
    assert (got - expected).abs().max() < 1e-5
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    tokens = batch["tokens"]
    with torch.no_grad():
        # Without side channels the export is what the Hugging Face folder holds.
        assert torch.allclose(hf(tokens).logits, exported(tokens).logits, atol=1e-4)


def test_checkpoints_hold_what_trains_only(lora_run, full_run, base):
    (lora_out, _), (full_out, _) = lora_run, full_run
    step = "step-000000008"
    names = dcp.FileSystemReader(lora_out / "checkpoints" / step).read_metadata()
    model = {
        key.removeprefix("run.model.")
        for key in names.state_dict_metadata
        if key.startswith("run.model.")
    }
    frozen = {
        name
        for name in load_file(base / "model.safetensors")
        if trainable_kind(name) not in ("router", "techniques")
    }
    assert {"embed.weight", "blocks.0.attention.q.weight", "blocks.0.moe.experts.w1"} <= frozen
    assert not model & frozen
    assert {"blocks.0.attention.q.lora.weight.a", "blocks.0.moe.router.weight"} <= model
    lora_bytes = checkpoint_bytes(lora_out / "checkpoints" / step)
    full_bytes = checkpoint_bytes(full_out / "checkpoints" / step)
    assert lora_bytes < full_bytes / 3, (lora_bytes, full_bytes)


def test_a_lora_run_resumes_exactly(data, base, lora_run, tmp_path):
    whole, _ = lora_run
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / "config.json", resumed / "config.json")
    step_4 = whole / "checkpoints" / "step-000000004"
    shutil.copytree(step_4, resumed / "checkpoints" / step_4.name)
    report = train(data, resumed, *run_config(base, *LORA))
    assert report.resumed_from == 4
    assert losses(resumed) == {step: loss for step, loss in losses(whole).items() if step > 4}
    got = load_file(resumed / "model" / "model.safetensors")
    expected = load_file(whole / "model" / "model.safetensors")
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []


def test_a_data_parallel_lora_run_is_the_one_process_run(data, base, lora_run, tmp_path):
    """FSDP2 over two gloo ranks shards the frozen base and the adapters alike."""
    single, _ = lora_run
    out = tmp_path / "run"
    arguments = ["--data", str(data), "--out", str(out), "--quiet"]
    arguments += ["--config", str(ROOT / "configs" / "tiny.toml")]
    for setting in [*FAST, *RECIPE, f"train.init_from={base}", *LORA]:
        arguments += ["--set", setting]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "zen_coder.training", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    expected, got = losses(single), losses(out)
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=LOSS_TOLERANCE), f"step {step}"
    reference = load_file(single / "model" / "model.safetensors")
    weights = load_file(out / "model" / "model.safetensors")
    errors = {name: relative_error(weights[name], reference[name]) for name in reference}
    assert max(errors.values()) < WEIGHT_TOLERANCE, max(errors.items(), key=lambda x: x[1])


def test_merging_folds_each_adapter_into_its_weight():
    """merge_weights on its own: the plain model with merged weights computes the adapted
    model's logits."""
    model_config = dataclasses.replace(configs()[0], n_repos=3, n_languages=3)
    torch.manual_seed(0)
    lora = LoraConfig(rank=RANK, alpha=ALPHA)
    model = apply_lora(ZenCoder(model_config), lora).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".b"):
                parameter.normal_(std=0.05)
    plain = ZenCoder(model_config).eval()
    plain.load_state_dict(merge_weights(model.state_dict(), lora))
    batch = fixed_batch(model_config.vocab_size)
    with torch.no_grad():
        assert (plain(**batch).logits - model(**batch).logits).abs().max() < 1e-5


def test_a_bfloat16_run_keeps_its_frozen_base_in_bfloat16(data, base, tmp_path):
    """Trained in bfloat16, the frozen matrices are stored in bfloat16 (half the memory; the
    forward computes in it anyway); the token embedding, the norms and what trains stay float32,
    the adapters still lower the loss, and the export is the float32 merge. (Stored in float32,
    as before, the first check fails: the frozen bytes were twice these.)"""
    _, config = run_config(base, *LORA, "train.dtype=bfloat16")
    model = apply_lora(load_model(base), config.lora, low_precision(config))  # as the run does
    dtypes = {name: parameter.dtype for name, parameter in model.named_parameters()}
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert {dtypes[name] for name in frozen if name.endswith(("q.weight", "experts.w1"))} == {
        torch.bfloat16
    }
    assert dtypes["embed.weight"] == dtypes["blocks.0.attention_norm.weight"] == torch.float32
    assert {dtypes[name] for name in dtypes if name not in frozen} == {torch.float32}
    settings = run_config(base, *LORA, "train.dtype=bfloat16", "train.lr=0.01")
    report = train(data, tmp_path / "run", *settings)
    assert report.validation["loss"] < report.initial_validation["loss"]
    exported = load_model(tmp_path / "run" / "model")
    assert {parameter.dtype for parameter in exported.parameters()} == {torch.float32}
