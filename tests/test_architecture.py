"""Packages depend only downward (docs/architecture.md): the model needs no other stage, and
inference and evaluation never need training. Read from the source, so an import inside a
function, which importing the module would not run, counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
# What the model may import besides itself: the modules every stage shares.
MODEL_MAY_IMPORT = ("zen_coder.errors", "zen_coder.files", "zen_coder.settings")
PACKAGES_RUN_ON_THE_WAY = {"zen_coder"}  # its __init__.py, all but empty
NEVER = {
    "zen_coder.inference": ("training", "evaluation", "cli", "quickstart"),
    "zen_coder.evaluation": ("training", "cli", "quickstart"),
    "zen_coder.serving": ("training", "evaluation", "cli", "quickstart"),
}


def module_paths() -> dict[str, Path]:
    names = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_paths()


def inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in packages)


def imported(name: str) -> set[str]:
    """The zen_coder modules that importing `name` runs: what it imports and their packages."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)  # and `from package import module` imports the module
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    packages = {module.rsplit(".", depth)[0] for module in found for depth in (1, 2, 3)}
    return {module for module in found | packages if module in MODULES and module != name}


def closure(name: str) -> set[str]:
    """Every zen_coder module that importing `name` runs, directly or not."""
    seen, todo = set(), [name]
    while todo:
        for module in imported(todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen


def modules_of(package: str) -> list[str]:
    return sorted(name for name in MODULES if inside(name, (package,)))


@pytest.mark.parametrize("name", modules_of("zen_coder.model"))
def test_the_model_needs_no_other_stage(name):
    """Checked by hand: with model.config's default taken from the mining stage's language
    list, as before, every module of the model (but its empty __init__) failed here."""
    allowed = ("zen_coder.model", *MODEL_MAY_IMPORT)
    outside = closure(name) - PACKAGES_RUN_ON_THE_WAY
    outside = {module for module in outside if not inside(module, allowed)}
    assert not outside, f"{name} imports {sorted(outside)}"


@pytest.mark.parametrize(
    ("name", "above"),
    [
        (name, tuple(f"zen_coder.{package}" for package in packages))
        for stage, packages in NEVER.items()
        for name in modules_of(stage)
    ],
)
def test_inference_and_evaluation_never_need_training(name, above):
    """Checked by hand: with the model folder read by training.checkpoint, as before,
    inference.native, .huggingface and .backends failed here."""
    reached = sorted(module for module in closure(name) if inside(module, above))
    assert not reached, f"{name} imports {reached}"
