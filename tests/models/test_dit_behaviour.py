"""Invariants of the pyramid DiTs on tiny random models (shapes, masking, checkpointing, config)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pyramid_core.models import PyramidDiffusionMMDiT, PyramidFluxTransformer

TINY = {
    "flux": lambda: PyramidFluxTransformer(
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6),
    ),
    "mmdit": lambda: PyramidDiffusionMMDiT(
        sample_size=32, num_layers=2, attention_head_dim=16, num_attention_heads=2, caption_projection_dim=32,
        pooled_projection_dim=16, pos_embed_max_size=16, joint_attention_dim=32,
    ),
}


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = TINY[family]()
    with torch.no_grad():  # the training init zeroes modulation and outputs; make every path live
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def training_batch(valid=(8, 5, 3)):
    """Three pyramid entries (stages of different lengths), batch 1 each, with history."""
    g = torch.Generator().manual_seed(1)
    sample = [
        [torch.randn(1, 16, 2, 2, 2, generator=g), torch.randn(1, 16, 1, 2, 2, generator=g)],
        [torch.randn(1, 16, 1, 2, 2, generator=g), torch.randn(1, 16, 1, 4, 4, generator=g),
         torch.randn(1, 16, 1, 4, 4, generator=g)],
        [torch.randn(1, 16, 2, 8, 8, generator=g)],
    ]
    rows = len(sample)
    mask = torch.zeros(rows, 8, dtype=torch.int64)
    for r, n in enumerate(valid):
        mask[r, :n] = 1
    return dict(
        sample=sample,
        encoder_hidden_states=torch.randn(rows, 8, 32, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(rows, 16, generator=g),
        timestep_ratio=torch.tensor([900.0, 500.0, 100.0]),
    )


@pytest.mark.parametrize("family", TINY)
def test_output_shapes_follow_the_noisy_clips(family):
    batch = training_batch()
    with torch.no_grad():
        out = tiny(family)(**batch)
    assert [o.shape for o in out] == [entry[-1].shape for entry in batch["sample"]]


@pytest.mark.parametrize("family", TINY)
def test_padded_text_tokens_are_ignored(family):
    model, batch = tiny(family), training_batch()
    with torch.no_grad():
        ref = model(**batch)
        padded = batch["encoder_attention_mask"] == 0
        batch["encoder_hidden_states"][padded] = 1e3
        out = model(**batch)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", TINY)
def test_text_padded_in_every_row_never_enters_the_text_stream(family):
    """T5 pads to 128 tokens: columns that no row uses are dropped before the text stream's
    layers (exact: the same outputs as without them), so the blocks see the longest prompt."""
    model, batch = tiny(family), training_batch(valid=(8, 5, 3))
    widths = []
    model.context_embedder.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    padded = dict(batch, encoder_hidden_states=torch.cat([batch["encoder_hidden_states"],
                                                          torch.randn(3, 120, 32) * 1e3], dim=1),
                  encoder_attention_mask=torch.cat([batch["encoder_attention_mask"],
                                                    torch.zeros(3, 120, dtype=torch.int64)], dim=1))
    with torch.no_grad():
        ref, out = model(**batch), model(**padded)
    assert widths == [8, 8]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", TINY)
def test_the_token_layout_is_built_once_per_geometry(family):
    """The steps of a stage share clip shapes and text mask: their layout is built once; a new
    mask or new shapes build a new one, and a reused layout gives a fresh model's outputs."""
    model, batch = tiny(family), training_batch()
    with torch.no_grad():
        first = model(**batch)
        layout = model._layout_cache[-1]
        again = model(**dict(batch, timestep_ratio=batch["timestep_ratio"] * 0.5))
        assert model._layout_cache[-1] is layout
        other_mask = batch["encoder_attention_mask"].clone()
        other_mask[1, 4] = 0
        model(**dict(batch, encoder_attention_mask=other_mask))
        assert model._layout_cache[-1] is not layout
        fresh = tiny(family)(**dict(batch, timestep_ratio=batch["timestep_ratio"] * 0.5))
    for a, b in zip(again, fresh):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, f) for a, f in zip(first, again))


@pytest.mark.parametrize("family", TINY)
def test_entries_do_not_see_each_other(family):
    """Packed entries are independent: changing one entry's latents leaves the others alone."""
    model, batch = tiny(family), training_batch()
    with torch.no_grad():
        ref = model(**batch)
        batch["sample"][2][0].mul_(-1)
        out = model(**batch)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-6)
    assert not torch.allclose(out[2], ref[2])


@pytest.mark.parametrize("family", TINY)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    grads = []
    for checkpointing in (False, True):
        model = tiny(family).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        loss = sum(o.square().mean() for o in model(**training_batch()))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", TINY)
def test_config_round_trip_keeps_runtime_switches_out(family, tmp_path):
    model = tiny(family)
    model.save_config(tmp_path)
    config = type(model).load_config(tmp_path)
    assert "use_flash_attn" not in config and "use_gradient_checkpointing" not in config
    rebuilt = type(model).from_config({**config, "use_flash_attn": True, "use_gradient_checkpointing": True})
    assert {n: p.shape for n, p in rebuilt.state_dict().items()} == {n: p.shape for n, p in model.state_dict().items()}


@pytest.mark.parametrize("family", TINY)
def test_bfloat16_runs_close_to_float32(family):
    model, batch = tiny(family), training_batch()
    with torch.no_grad():
        ref = model(**batch)
        out = model.to(torch.bfloat16)(**{**batch, "encoder_hidden_states": batch["encoder_hidden_states"].bfloat16(),
                                            "pooled_projections": batch["pooled_projections"].bfloat16()})
    for o, r in zip(out, ref):
        assert o.dtype == torch.bfloat16
        assert (o.float() - r).abs().max() < 0.1 * r.abs().max() + 0.05


def test_mismatched_conditioning_rows_are_explained():
    batch = training_batch()
    batch["pooled_projections"] = batch["pooled_projections"][:2]
    with pytest.raises(ValueError, match=r"pooled_projections has 2 rows.*= 3"):
        tiny("flux")(**batch)


def test_a_bare_tensor_sample_is_explained():
    batch = training_batch()
    batch["sample"] = batch["sample"][2][0]
    with pytest.raises(TypeError, match=r"\[\[latent\]\]"):
        tiny("flux")(**batch)


@pytest.mark.parametrize("family", TINY)
def test_block_swap_gives_the_same_outputs_and_streams_blocks_in_order(family):
    """Blocks on the host, streamed in ahead of use: the outputs are bit-identical, each block
    is copied before it runs (the last ones prefetch the first for the next call), and the
    host copies are what the blocks hold between calls. On a CUDA device the copies run on a
    side stream; benchmarks/gpu_check.py compares that path."""
    from pyramid_core.models.block_swap import BlockSwap, transformer_blocks

    model, batch = tiny(family), training_batch()
    with torch.no_grad():
        expected = model(**batch)
    blocks = transformer_blocks(model)
    swap = BlockSwap(model, "cpu", swapped=len(blocks), ahead=1)
    host = [[p.data_ptr() for p in block.parameters()] for block in blocks]
    with torch.no_grad():
        for _ in range(2):
            out = model(**batch)
            for o, e in zip(out, expected):
                assert torch.equal(o, e)
            assert [[p.data_ptr() for p in block.parameters()] for block in blocks] == host
    n = len(blocks)
    assert swap.loads[:n] == list(range(n)) and swap.loads[n] == 0          # the last block fetched the first
    swap.remove()
    with torch.no_grad():
        assert all(torch.equal(o, e) for o, e in zip(model(**batch), expected))
    with pytest.raises(ValueError, match=f"give 1 to {n}"):
        BlockSwap(model, "cpu", swapped=n + 1)


class HostReads(TorchDispatchMode):
    """Records every op that reads tensor values on the host (a CUDA synchronisation on a
    GPU), plus ``.tolist()`` / ``.cpu()``, which do not reach the dispatcher on CPU tensors."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default,
               torch.ops.aten.nonzero.default, torch.ops.aten.is_nonzero.default,
               torch.ops.aten.masked_select.default, torch.ops.aten.unique_consecutive.default,
               torch.ops.aten._unique2.default}

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads = []
        for name in ("tolist", "cpu"):
            original = getattr(torch.Tensor, name)

            def recorded(tensor, *args, _name=name, _original=original, **kwargs):
                if self.active:
                    self.reads.append(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, recorded)
        self.active = False

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        if func in self.SYNCING or boolean_index:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", TINY)
def test_the_steps_after_the_first_of_a_stage_read_nothing_on_the_host(family, monkeypatch):
    """Issue 26: no host sync in a forward once the stage's layout exists. The samplers pass
    the same text tensors to every step; the frame mask (history) and padded text columns
    (dropped once) are both in play."""
    g = torch.Generator().manual_seed(3)
    history, noisy = torch.randn(2, 16, 2, 2, 2, generator=g), torch.randn(2, 16, 1, 4, 4, generator=g)
    mask = torch.zeros(2, 8, dtype=torch.int64)
    mask[0, :5], mask[1, :3] = 1, 1                    # columns 5-7 are padding in every row
    inputs = dict(encoder_hidden_states=torch.randn(2, 8, 32, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 16, generator=g))
    model = tiny(family)
    with torch.no_grad():
        model(sample=[[history, noisy]], timestep_ratio=torch.tensor([900.0, 900.0]), **inputs)
        with HostReads(monkeypatch) as reads:
            second = model(sample=[[history, noisy]], timestep_ratio=torch.tensor([800.0, 800.0]), **inputs)
        fresh = tiny(family)(sample=[[history, noisy]], timestep_ratio=torch.tensor([800.0, 800.0]), **inputs)
    assert reads.reads == []
    torch.testing.assert_close(second, fresh, rtol=0, atol=0)


def test_rope_in_real_arithmetic_equals_the_complex_rotation():
    # The reference rotates channel pairs as complex64 products; ours writes the product out
    # (so inductor can fuse it). Same result to fp32 rounding, in fp32 and through bf16.
    from pyramid_core.models.dit_layers import rope_angles, rope_rotations
    from pyramid_core.models.fused import apply_rope

    g = torch.Generator().manual_seed(0)
    positions = torch.rand(50, 3, generator=g) * 40
    angles = rope_angles(positions, (4, 6, 6))                                        # (50, 8)
    x = torch.randn(2, 50, 3, 16, generator=g)
    complex_rotation = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * complex_rotation[:, None])
    torch.testing.assert_close(apply_rope(x, rope_rotations(angles)), expected.flatten(-2), rtol=0, atol=2e-6)
    rotated = apply_rope(x.bfloat16(), rope_rotations(angles))
    assert rotated.dtype == torch.bfloat16
    torch.testing.assert_close(rotated.float(), expected.flatten(-2), rtol=1e-2, atol=2e-2)
