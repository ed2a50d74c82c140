"""Starting weights piece by piece: any piece of a weight, read or drawn on its own, is that
piece of the whole weight, so every sharding starts from the weights one process starts from."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.test_hf import hf_checkpoint
from zen_coder.model.hf import pretrained_sources
from zen_coder.model.weights import Initial, build

CASES = {
    "dense-sliced-grown": ("llama", {"experts": 4, "upcycle": "slice", "vocab_size": 300}),
    "dense-copied": ("llama", {"experts": 4, "experts_per_token": 2}),
    "mixtral": ("mixtral", {}),
}


def pieces(shape: tuple[int, ...], generator: torch.Generator) -> list[tuple[slice, ...]]:
    """A few regions of a tensor of `shape`, as shards cut it: rows, columns, both, and one
    row."""

    def cut(size: int) -> slice:
        start = int(torch.randint(0, size, (), generator=generator))
        stop = int(torch.randint(start + 1, size + 1, (), generator=generator))
        return slice(start, stop)

    whole = [slice(0, size) for size in shape]
    regions = [(cut(shape[0]), *whole[1:]), (slice(shape[0] - 1, shape[0]), *whole[1:])]
    if len(shape) > 1:
        regions += [(whole[0], cut(shape[1]), *whole[2:]), tuple(cut(size) for size in shape)]
    return regions


@pytest.mark.parametrize("case", CASES)
def test_every_piece_of_a_weight_is_that_piece_of_the_whole(tmp_path, case):
    """Whether the whole is right is test_hf.py's question (the logits of transformers); this
    one asks whether a rank's piece is the piece of it. (Broken by hand, Upcycled slicing the
    experts from 0 whatever the piece's first expert, the sliced case fails on
    blocks.0.moe.experts.w1.)"""
    family, options = CASES[case]
    hf_checkpoint(tmp_path, family)
    config, sources = pretrained_sources(tmp_path, seed=3, **options)
    model = build(config, sources, seed=3)
    generator = torch.Generator().manual_seed(0)
    weights = dict(model.named_parameters())
    for name, source in sources.items():
        whole = weights[name].detach()
        for region in pieces(tuple(whole.shape), generator):
            assert torch.equal(source.read(region), whole[region]), (name, region)


def test_drawn_values_do_not_depend_on_the_pieces():
    """A weight larger than one block of draws: pieces across block boundaries are the pieces of
    one draw; another seed or parameter name draws other values."""
    shape = (3000, 2048)  # 1.5 blocks of 4 M values
    initial = Initial(shape, 0.0, 0.02, seed=7, name="embed.weight")
    whole = initial.read((slice(0, 3000), slice(0, 2048)))
    assert whole.std().item() == pytest.approx(0.02, rel=0.01)
    for region in [(slice(2000, 2100), slice(5, 9)), (slice(1999, 2049), slice(0, 2048))]:
        assert torch.equal(initial.read(region), whole[region])
    other = Initial(shape, 0.0, 0.02, seed=8, name="embed.weight").read((slice(0, 1), slice(0, 8)))
    assert not torch.equal(other, whole[:1, :8])


def test_a_bfloat16_checkpoint_reads_as_float32(tmp_path):
    hf_checkpoint(tmp_path, "llama")
    stored = load_file(tmp_path / "model.safetensors")
    save_file(
        {name: tensor.bfloat16() for name, tensor in stored.items()}, tmp_path / "model.safetensors"
    )
    config, sources = pretrained_sources(tmp_path)
    model = build(config, sources, seed=0)
    assert model.embed.weight.dtype == torch.float32
    expected = stored["model.embed_tokens.weight"].bfloat16().float()
    assert torch.equal(model.embed.weight.detach(), expected)
