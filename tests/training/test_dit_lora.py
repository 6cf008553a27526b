"""LoRA fine-tuning of the pyramid DiTs: only the adapters train, the exported file merges back
into a plain DiT with the same outputs, and broken LoRA files are rejected by name."""

from __future__ import annotations

import copy
import pytest
import torch
from safetensors.torch import save_file

import pyramid_core.models as models
from golden_utils import load_config, load_weights, section
from pyramid_core.scheduling import PyramidFlowScheduler
from pyramid_core.training.dit_objective import PyramidObjective, TextBatch, build_training_batch
from pyramid_core.distributed import DistInfo
from pyramid_core.training.dit_trainer import DiTTrainConfig, train_step
from pyramid_core.training.guard import NonFiniteGuard
from pyramid_core.training.lora import add_lora, export_lora, load_lora_into_dit, read_lora

FAMILIES = ("flux", "mmdit")


def tiny_dit(family: str) -> torch.nn.Module:
    spec = section("weights")[f"{family}_tiny"]
    model = getattr(models, spec["class"]).from_config(load_config(spec["config_file"]))
    model.load_state_dict(load_weights(spec["weights_file"]), strict=True)
    return model


def random_batch(model, seed: int = 0, n: int = 4):
    """A training batch of random latents and text for ``model`` (pyramid stages 0, 1, 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    latents = torch.randn(n, 16, 3, 8, 8, generator=g)
    text = TextBatch(torch.randn(n, 4, cfg.joint_attention_dim, generator=g), torch.ones(n, 4, dtype=torch.int64),
                     torch.randn(n, cfg.pooled_projection_dim, generator=g))
    objective = PyramidObjective(max_latent_frames=3, cfg_rate=0.0)
    return build_training_batch(latents, text, objective, PyramidFlowScheduler(), generator=g, step=seed)


def outputs(model, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(**batch.dit_kwargs())


def fine_tune(model, steps: int = 5, lr: float = 1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cfg = DiTTrainConfig(dit_config="x", grad_clip=1.0)
    model.train()
    guard = NonFiniteGuard("DiT", 1, DistInfo())
    for step in range(steps):
        logs = train_step(model, random_batch(model, step), optimizer, scheduler, params, cfg, torch.device("cpu"),
                          guard, step + 1)
        assert logs is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_training_changes_only_the_adapters(family):
    model = add_lora(tiny_dit(family), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    assert any(".attn.to_q" in n for n in adapted) and any(".ff.net.2" in n for n in adapted)
    assert not any(n.startswith(("x_embedder", "context_embedder", "time_text_embed", "proj_out", "norm_out"))
                   for n in adapted)
    before = copy.deepcopy(model.state_dict())
    fine_tune(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    assert any(".lora_B." in k for k in changed)  # B starts at zero: the adapter really learned


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_lora_merges_into_a_plain_dit_with_the_same_outputs(tmp_path, family):
    tuned = add_lora(tiny_dit(family), rank=4, alpha=8)
    fine_tune(tuned)
    path = export_lora(tuned, tmp_path / "lora.safetensors")
    layers, metadata = read_lora(path)
    assert metadata["pyramid_flow_model_class"] == type(tuned).__name__
    assert {layer.rank for layer in layers.values()} == {4}
    batch = random_batch(tuned, seed=99)
    merged = load_lora_into_dit(tiny_dit(family), path, scale=1.0)
    for got, want in zip(outputs(merged, batch), outputs(tuned, batch)):
        assert (got - want).abs().max().item() < 1e-5
    plain = load_lora_into_dit(tiny_dit(family), path, scale=0.0)
    base = outputs(tiny_dit(family), batch)
    assert all(torch.equal(a, b) for a, b in zip(outputs(plain, batch), base))


def test_lora_keys_use_the_diffusers_transformer_naming(tmp_path):
    from safetensors import safe_open

    path = export_lora(add_lora(tiny_dit("flux"), rank=2), tmp_path / "l.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in keys
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha"))
               for k in keys)
    with safe_open(str(path), "pt") as f:
        assert f.get_tensor("transformer.transformer_blocks.0.attn.to_q.alpha").item() == 2.0  # alpha = rank


# --------------------------------------------------------------------------------------
# bad files
# --------------------------------------------------------------------------------------

def test_lora_for_the_other_dit_is_rejected(tmp_path):
    path = export_lora(add_lora(tiny_dit("flux"), rank=2), tmp_path / "flux_lora.safetensors")
    with pytest.raises(ValueError, match="is a LoRA for PyramidFluxTransformer"):
        load_lora_into_dit(tiny_dit("mmdit"), path)


def test_lora_naming_layers_the_model_lacks_is_rejected(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"transformer.down_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
               "transformer.down_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2)}, str(path))
    with pytest.raises(ValueError, match="does not have"):
        load_lora_into_dit(tiny_dit("flux"), path)


def test_lora_with_disagreeing_ranks_is_rejected(tmp_path):
    path = tmp_path / "ranks.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 8)}, str(path))
    with pytest.raises(ValueError, match="ranks disagree"):
        load_lora_into_dit(tiny_dit("flux"), path)


def test_lora_for_another_model_size_is_rejected_and_the_model_is_untouched(tmp_path):
    path = tmp_path / "size.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 64),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(64, 4)}, str(path))
    model = tiny_dit("flux")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="different model size"):
        load_lora_into_dit(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unreadable_lora_file_is_rejected(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_lora_into_dit(tiny_dit("flux"), path)
    with pytest.raises(FileNotFoundError):
        load_lora_into_dit(tiny_dit("flux"), tmp_path / "missing.safetensors")
