"""Speed of the zen-coder model against transformers' Mixtral: same weights, same CPU, one run.

With the card's four techniques off, the `tiny` preset is a standard Mixtral-style mixture of
experts, so `transformers.MixtralForCausalLM` of the same shape computes the same function. The
script copies our weights into it (an explicit name map, below), checks the logits agree, then
measures each implementation in a fresh subprocess of itself (`--only ours|hf`), so that the peak
RSS it reads is that implementation's alone:

- training: forward + backward of the next-token loss (plus the balance loss, on both sides),
  tokens/s and peak RSS;
- greedy decoding with a key/value cache: new tokens/s, and whether both produce the same tokens.

Subprocesses alternate (ours, hf, hf, ours, ...) for `--rounds` rounds; throughput is the best
round of each, peak RSS the largest.

    python benchmarks/model_speed.py [--batch 8] [--seq 512] [--steps 10] [--rounds 3]
    python benchmarks/model_speed.py --profile ours     # where one side spends its time
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from zen_coder.model.config import ModelConfig, preset

# Our parameter names -> transformers' Mixtral names, one block's worth ({i} = block index).
# Mixtral in transformers 5.x keeps each layer's experts fused: gate_up_proj [E, 2F, D] is our
# w1 (gate) stacked over w3 (up) along dim 1; down_proj [E, D, F] is our w2 as it is.
GLOBAL_NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "head.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "blocks.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attention.q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attention.k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attention.v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attention.o.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.moe_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.moe.router.weight": "model.layers.{i}.mlp.gate.weight",
    "blocks.{i}.moe.experts.w2": "model.layers.{i}.mlp.experts.down_proj",
}
FUSED_GATE_UP = (
    "blocks.{i}.moe.experts.w1",
    "blocks.{i}.moe.experts.w3",
    "model.layers.{i}.mlp.experts.gate_up_proj",
)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def memory_mb() -> tuple[float, float]:
    """(resident now, peak resident) of this process, MB.

    Linux's ru_maxrss survives exec: a subprocess starts with its parent's peak (this parent holds
    both models), so a worker reads its own address space's high-water mark, VmHWM, instead;
    ru_maxrss only where /proc is missing.
    """
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak, peak


def our_config(name: str) -> ModelConfig:
    return preset(name).without_techniques()


def hf_config(config: ModelConfig):
    from transformers import MixtralConfig

    assert config.rope_scaling == "none" and not config.attention_bias
    assert not config.tie_embeddings and config.router_renormalize
    assert config.balancing == "aux_loss"
    return MixtralConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.expert_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dimension,
        num_local_experts=config.n_experts,
        num_experts_per_tok=config.experts_per_token,
        max_position_embeddings=config.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=False,
        # Our total loss adds balance_loss_weight x the balance loss; Mixtral adds
        # router_aux_loss_coef x its aux loss when called with output_router_logits=True.
        router_aux_loss_coef=config.balance_loss_weight,
        router_jitter_noise=0.0,
        attention_dropout=0.0,
        sliding_window=None,
        bos_token_id=None,
        eos_token_id=None,  # we decode without an end token: both run all max_new_tokens
        pad_token_id=None,
    )


def to_hf_state(ours: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Our state dict under Mixtral's names; every tensor of ours used exactly once."""
    state = {hf: ours[name] for name, hf in GLOBAL_NAMES.items()}
    used = set(GLOBAL_NAMES)
    for i in range(n_layers):
        for name, hf in BLOCK_NAMES.items():
            state[hf.format(i=i)] = ours[name.format(i=i)]
            used.add(name.format(i=i))
        gate, up, fused = (name.format(i=i) for name in FUSED_GATE_UP)
        state[fused] = torch.cat([ours[gate], ours[up]], dim=1).contiguous()
        used |= {gate, up}
    assert used == set(ours), f"unmapped tensors of ours: {sorted(set(ours) - used)}"
    return state


def build_ours(config: ModelConfig, state: dict[str, torch.Tensor] | None = None):
    from zen_coder.model.model import ZenCoder

    model = ZenCoder(config)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def build_hf(config: ModelConfig, state: dict[str, torch.Tensor]):
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM(hf_config(config)).float()
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return model


def hf_implementations(model) -> str:
    return (
        f"attention {model.config._attn_implementation}, "
        f"experts {model.config._experts_implementation}"
    )


# -- the two implementations behind one interface ----------------------------------------------


def train_step(impl: str, model, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    if impl == "ours":
        loss = model(tokens, targets=targets).loss
    else:
        loss = model(input_ids=tokens, labels=tokens, output_router_logits=True).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def generate(impl: str, model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    if impl == "ours":
        return model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0)
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


# -- one implementation, in its own process ----------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Measure one implementation; print one JSON line."""
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    inputs = torch.load(workdir / "inputs.pt")
    config = our_config(args.preset)
    state = torch.load(workdir / f"{args.only}.pt")
    model = build_ours(config, state) if args.only == "ours" else build_hf(config, state)
    del state
    tokens, targets, prompts = inputs["tokens"], inputs["targets"], inputs["prompts"]

    model.train()
    rss_before, _ = memory_mb()
    for _ in range(args.warmup):
        train_step(args.only, model, tokens, targets)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step(args.only, model, tokens, targets)
        times.append(time.perf_counter() - start)
    _, rss_peak = memory_mb()
    result: dict[str, Any] = {
        "train_seconds": sum(times),
        "train_median_step": statistics.median(times),
        "train_tokens": tokens.numel() * args.steps,
        "rss_before_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "generate": {},
    }

    model.eval()
    for batch in args.gen_batch:
        prompt = prompts[:batch]
        generate(args.only, model, prompt, 4)  # warm-up
        best, output = float("inf"), None
        for _ in range(args.gen_repeats):
            start = time.perf_counter()
            output = generate(args.only, model, prompt, args.new_tokens)
            best = min(best, time.perf_counter() - start)
        result["generate"][str(batch)] = {
            "seconds": best,
            "new_tokens": batch * args.new_tokens,
            "tokens": output.tolist(),
        }
    print(json.dumps(result))


def run_worker(impl: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--only", impl, "--workdir", str(workdir)]
    for flag in ("preset", "threads", "warmup", "steps", "new_tokens", "gen_repeats"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--gen-batch", *map(str, args.gen_batch)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the {impl} measurement failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent: equivalence, then the measurements --------------------------------------------


def make_inputs(config: ModelConfig, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    from zen_coder.model.model import next_token_targets

    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator)
    prompts = torch.randint(
        0, config.vocab_size, (max(args.gen_batch), args.prompt), generator=generator
    )
    return {"tokens": tokens, "targets": next_token_targets(tokens, None), "prompts": prompts}


def check_equivalence(config: ModelConfig, args: argparse.Namespace, workdir: Path) -> dict:
    """Build both on the same weights, assert they agree, save weights and inputs for workers."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(args.seed)
    ours = build_ours(config)
    ours_state = {name: tensor.detach().clone() for name, tensor in ours.state_dict().items()}
    hf_state = to_hf_state(ours_state, config.n_layers)
    hf = build_hf(config, hf_state)
    inputs = make_inputs(config, args)
    tokens, targets = inputs["tokens"], inputs["targets"]

    ours.eval(), hf.eval()
    with torch.no_grad():
        ours_out = ours(tokens, targets=targets)
        hf_out = hf(input_ids=tokens, labels=tokens, output_router_logits=True)
    diff = (ours_out.logits - hf_out.logits).abs().max().item()
    assert diff < 1e-3, f"the two models disagree: max |logits diff| = {diff:.2e}"
    hf_lm = (hf_out.loss - config.balance_loss_weight * hf_out.aux_loss).item()
    lm_diff = abs(ours_out.losses["lm"].item() - hf_lm)
    assert lm_diff < 1e-4, f"next-token losses disagree by {lm_diff:.2e}"
    # Ours: the mean over layers of each layer's Switch balance loss. Mixtral's aux loss pools
    # the fractions and probabilities over layers first; applied to one layer at a time, it is
    # ours exactly.
    per_layer = [
        load_balancing_loss_func((logits,), config.n_experts, config.experts_per_token)
        for logits in hf_out.router_logits
    ]
    per_layer_mean = torch.stack(per_layer).mean().item()
    torch.save(inputs, workdir / "inputs.pt")
    torch.save(ours_state, workdir / "ours.pt")
    torch.save(hf_state, workdir / "hf.pt")
    return {
        "logits_diff": diff,
        "lm": ours_out.losses["lm"].item(),
        "hf_lm": hf_lm,
        "balance": ours_out.losses["balance"].item(),
        "hf_per_layer_balance": per_layer_mean,
        "hf_aux": hf_out.aux_loss.item(),
        "z": ours_out.losses["z"].item(),
        "hf_impl": hf_implementations(hf),
        "parameters": sum(p.numel() for p in ours.parameters()),
    }


def first_difference(a: list[list[int]], b: list[list[int]], prompt: int) -> str:
    if a == b:
        return "yes"
    for row, (x, y) in enumerate(zip(a, b, strict=True)):
        for position, (s, t) in enumerate(zip(x, y, strict=True)):
            if s != t:
                return f"NO (row {row}, new token {position - prompt})"
    return "NO (lengths differ)"


def report(config: ModelConfig, args: argparse.Namespace) -> None:
    import transformers

    print(
        f"zen-coder vs transformers MixtralForCausalLM: preset {args.preset!r}, techniques off, "
        f"float32, {args.threads} threads (torch.set_num_threads), torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(
        f"shape: d_model {config.d_model}, {config.n_layers} layers, {config.n_heads} heads / "
        f"{config.n_kv_heads} kv heads of {config.head_dimension}, {config.n_experts} experts "
        f"(top {config.experts_per_token}) of width {config.expert_dim}, vocab "
        f"{config.vocab_size}, rope theta {config.rope_theta:g}"
    )
    with tempfile.TemporaryDirectory(prefix="zen-coder-model-speed-") as scratch:
        workdir = Path(scratch)
        check = check_equivalence(config, args, workdir)
        print(f"parameters: {check['parameters']:,}; transformers uses {check['hf_impl']}")
        print(
            f"same function: max |logits diff| {check['logits_diff']:.1e} (< 1e-3); next-token "
            f"loss ours {check['lm']:.6f}, hf {check['hf_lm']:.6f}"
        )
        weight = config.balance_loss_weight
        print(
            f"losses: both add {weight:g} x balance loss (hf: router_aux_loss_coef={weight:g}, "
            f"output_router_logits=True); ours {check['balance']:.6f} = mean of hf's per-layer "
            f"aux {check['hf_per_layer_balance']:.6f} (hf's own aux pools the layers first: "
            f"{check['hf_aux']:.6f})"
        )
        print(
            f"        ours also adds {config.router_z_loss_weight:g} x router z-loss "
            f"({check['z']:.3f}); hf has none"
        )
        results: dict[str, list[dict]] = {"ours": [], "hf": []}
        for round_index in range(args.rounds):
            order = ("ours", "hf") if round_index % 2 == 0 else ("hf", "ours")
            for impl in order:
                print(f"  round {round_index + 1}/{args.rounds}: {impl} ...", flush=True)
                results[impl].append(run_worker(impl, args, workdir))

    def best_rate(impl: str) -> tuple[float, dict]:
        best = min(results[impl], key=lambda r: r["train_seconds"])
        return best["train_tokens"] / best["train_seconds"], best

    print(
        f"\ntraining: forward + backward, batch {args.batch} x {args.seq} random tokens, "
        f"{args.warmup} warm-up + {args.steps} timed steps, best of {args.rounds} rounds"
    )
    print(
        f"{'':14}{'tokens/s':>10}{'ms/step':>10}{'peak RSS':>12}{'RSS growth':>13}"
        "   tokens/s of each round"
    )
    rates = {}
    for impl, label in (("ours", "zen-coder"), ("hf", "transformers")):
        rate, best = best_rate(impl)
        rates[impl] = rate
        peak = max(r["rss_peak_mb"] for r in results[impl])
        growth = max(r["rss_peak_mb"] - r["rss_before_mb"] for r in results[impl])
        step_ms = 1000 * best["train_seconds"] / args.steps
        rounds = " ".join(f"{r['train_tokens'] / r['train_seconds']:,.0f}" for r in results[impl])
        print(f"{label:14}{rate:10,.0f}{step_ms:10.1f}{peak:9,.0f} MB{growth:10,.0f} MB   {rounds}")
    train_ratio = rates["ours"] / rates["hf"]
    print(f"ratio ours/hf: {train_ratio:.2f}x tokens/s (target >= 1.0x)")
    print("(peak RSS: the worker's VmHWM after training; growth: that minus its RSS before)")

    print(
        f"\ngreedy decoding with a KV cache: prompt {args.prompt} random tokens, "
        f"{args.new_tokens} new tokens, prefill included, best of {args.gen_repeats} calls x "
        f"{args.rounds} rounds"
    )
    print(f"{'batch':>5}{'ours tok/s':>12}{'hf tok/s':>12}{'ours/hf':>9}  same tokens")
    gen_ratios = []
    for batch in map(str, args.gen_batch):
        rate = {}
        for impl in ("ours", "hf"):
            seconds = min(r["generate"][batch]["seconds"] for r in results[impl])
            rate[impl] = results[impl][0]["generate"][batch]["new_tokens"] / seconds
        same = first_difference(
            results["ours"][0]["generate"][batch]["tokens"],
            results["hf"][0]["generate"][batch]["tokens"],
            args.prompt,
        )
        gen_ratios.append(rate["ours"] / rate["hf"])
        print(f"{batch:>5}{rate['ours']:12,.0f}{rate['hf']:12,.0f}{gen_ratios[-1]:8.2f}x  {same}")
    print(
        f"\nratios ours/hf (target >= 1.0x): training {train_ratio:.2f}x; decoding "
        + ", ".join(f"batch {b} {r:.2f}x" for b, r in zip(args.gen_batch, gen_ratios, strict=True))
    )


# -- profiling ---------------------------------------------------------------------------------


def profile(config: ModelConfig, args: argparse.Namespace) -> None:
    """torch.profiler tables for one implementation: a training step, then one decode."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(args.seed)
    ours = build_ours(config)
    state = {name: tensor.detach().clone() for name, tensor in ours.state_dict().items()}
    model = (
        ours if args.profile == "ours" else build_hf(config, to_hf_state(state, config.n_layers))
    )
    inputs = make_inputs(config, args)
    model.train()
    for _ in range(args.warmup):
        train_step(args.profile, model, inputs["tokens"], inputs["targets"])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            train_step(args.profile, model, inputs["tokens"], inputs["targets"])
    print(f"== {args.profile}: {args.steps} training steps ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    model.eval()
    prompt = inputs["prompts"][: args.gen_batch[0]]
    generate(args.profile, model, prompt, 4)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(args.profile, model, prompt, args.new_tokens)
    print(f"== {args.profile}: decoding, batch {args.gen_batch[0]}, {args.new_tokens} tokens ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gen-batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--gen-repeats", type=int, default=3, help="timed generate calls")
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per implementation")
    parser.add_argument("--threads", type=int, default=cores())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=("ours", "hf"), help="profile one side instead")
    parser.add_argument("--rows", type=int, default=25, help="rows of each profile table")
    parser.add_argument("--only", choices=("ours", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = our_config(args.preset)
    if args.only:
        worker(args)
    elif args.profile:
        profile(config, args)
    else:
        started = time.perf_counter()
        report(config, args)
        print(f"\nbenchmark finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
