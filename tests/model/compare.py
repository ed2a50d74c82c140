"""How far two computations of the same model are apart: its logits and its gradients, each
as a relative error.

A loss hides a broken block: at initialization the logits are near uniform, so skipping one
block of the tiny test model moves its loss by 0.003 %, while its logits move by 2.4 % and that
block's gradients by 96 %. So the tests that compare a sharded, compiled or fused computation with
a plain one compare logits and gradients, at tolerances such a broken variant exceeds.
"""

from __future__ import annotations

import torch


def relative_error(mine: torch.Tensor, reference: torch.Tensor) -> float:
    """|mine - reference| / |reference| (Frobenius norms, in float64); 0 for two zero tensors."""
    mine, reference = mine.detach().double(), reference.detach().double()
    difference = float((mine - reference).norm())
    scale = float(reference.norm())
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a DTensor; collective), or the tensor itself."""
    gather = getattr(tensor, "full_tensor", None)
    return (gather() if gather is not None else tensor).detach().cpu()


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient, by name (collective when the model is sharded)."""
    return {
        name: full(parameter.grad)
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }


def gradient_errors(
    mine: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], per_block: bool = False
) -> dict[str, float]:
    """Each parameter's gradient error (a gradient missing on one side counts as zeros), or
    with `per_block` the error of each block's gradients taken together ("blocks.N"; the
    parameters outside the blocks form "rest"), which rounding in bfloat16 disturbs far less
    than the small gradients of single parameters."""
    names = sorted(mine.keys() | reference.keys())
    groups: dict[str, list[str]] = {}
    for name in names:
        group = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else "rest"
        groups.setdefault(group if per_block else name, []).append(name)
    errors = {}
    for group, members in groups.items():
        ours = [_flat(mine.get(name), reference.get(name)) for name in members]
        theirs = [_flat(reference.get(name), mine.get(name)) for name in members]
        errors[group] = relative_error(torch.cat(ours), torch.cat(theirs))
    return errors


def _flat(gradient: torch.Tensor | None, other: torch.Tensor | None) -> torch.Tensor:
    return (torch.zeros_like(other) if gradient is None else gradient).flatten()


def worst(errors: dict[str, float]) -> tuple[str, float]:
    """The parameter (or block) with the largest error, and that error."""
    name = max(errors, key=errors.__getitem__)
    return name, errors[name]
