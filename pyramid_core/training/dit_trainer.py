"""Train or fine-tune a pyramid DiT (miniFLUX or SD3) on pre-extracted latents and text features.

Input is the reference's JSONL (``{"latent": ..., "text_fea": ..., "text": ...}`` per row, see
:mod:`.data`): latents ``(1, 16, T, h, w)`` straight from the VAE (normalised here with the
variant's first-frame / later-frame constants unless ``latents_normalized``), text features a
dict ``prompt_embed (1, L, D)``, ``prompt_attention_mask (1, L)``, ``pooled_prompt_embed (1, P)``.

Helpers first, then :func:`train_dit`, whose loop fits one screen: next batch, pyramid
inputs (:mod:`.dit_objective`), one optimizer step, EMA, log, checkpoint. Full fine-tuning
or LoRA (``lora_rank > 0``: only the adapters train, which fits one GPU with bf16 autocast
and gradient checkpointing). Runs alone or under torchrun; resumes exactly from the last
checkpoint; exports a ``diffusion_transformer`` folder (full) or ``lora.safetensors``.

Null text (classifier-free guidance dropout): the reference replaces a dropped sample's text
by ``null_text_embeds``, which it never defines. Here it is the file ``null_text_fea`` (the
text features of the empty prompt, extracted like the others: what the reference gets when it
runs its text encoder on ``""``) or, without it, zeros for the T5 and CLIP features with only
the first T5 token unmasked (an empty prompt tokenises to a lone end-of-sequence token).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..latents import normalize_latents
from ..loading import load_dit, read_config
from ..models import PyramidDiffusionMMDiT, PyramidFluxTransformer
from ..scheduling import PyramidFlowScheduler
from ..variants import get_variant
from .checkpoints import (CheckpointManager, export_diffusers_folder, load_training_checkpoint, resolve_resume,
                          rng_state, set_rng_state)
from .config import ConfigError, TrainConfig
from .data import LatentDataset, make_loader
from .distributed import (DistInfo, all_reduce_mean, cleanup, init_distributed, load_optimizer_state_dict,
                          model_state_dict, optimizer_state_dict, setup_logging, unwrap, wrap_model)
from .dit_objective import (PyramidObjective, TextBatch, build_training_batch, check_training_latents,
                            flow_matching_loss)
from .ema import EMA
from .guard import NonFiniteGuard, clipped_grad_norm
from .logs import MetricLogger
from .lora import add_lora, export_lora

log = logging.getLogger("pyramid_core.training")

METRICS = ["loss", "grad_norm", "lr", "frames", "skipped", "nonfinite", "sec_per_step"]
DIT_CLASSES = {cls.__name__: cls for cls in (PyramidFluxTransformer, PyramidDiffusionMMDiT)}


@dataclass
class DiTTrainConfig(TrainConfig):
    """The DiT trainer; defaults follow the reference's video recipe (``train_pyramid_flow.sh``)."""

    dit_config: str = ""            # config.json (file or its folder) of an architecture to train from scratch
    init_weights: str = ""          # pretrained DiT folder or single file (needed for LoRA)
    variant: str = "miniflux-384p"  # latent normalisation and scheduler constants
    latents_normalized: bool = False  # latent files already hold DiT-space (normalised) latents
    max_latent_frames: int = 16     # longest clip in latent frames (longer ones are cut)
    frame_per_unit: int = 1
    temporal_pyramid: bool = True   # autoregressive temporal-pyramid training; False: full sequence
    sample_ratios: list[int] = field(default_factory=lambda: [1, 2, 1])  # batch columns per stage
    corrupt_ratio: float = 1 / 3
    cfg_rate: float = 0.1
    timestep_sampling: str = "uniform"  # "uniform" (reference), "logit_normal", "mode"
    mode_scale: float = 1.29
    video_sync_group: int = 1
    null_text_fea: str = ""         # text features of the empty prompt; "" = zeros (module doc)
    lora_rank: int = 0              # > 0: train LoRA adapters only
    lora_alpha: float = 0.0         # 0 = lora_rank
    lora_dropout: float = 0.0
    ema_every: int = 1              # EMA update interval in steps (the reference uses 100)
    export_ema: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-4
    lr: float = 5e-5

    def objective(self) -> PyramidObjective:
        return PyramidObjective(
            sample_ratios=tuple(self.sample_ratios), temporal_pyramid=self.temporal_pyramid,
            frame_per_unit=self.frame_per_unit, max_latent_frames=self.max_latent_frames,
            corrupt_ratio=self.corrupt_ratio, cfg_rate=self.cfg_rate, timestep_sampling=self.timestep_sampling,
            mode_scale=self.mode_scale, video_sync_group=self.video_sync_group)

    def validate(self) -> None:
        super().validate()
        if bool(self.dit_config) == bool(self.init_weights):
            raise ConfigError("give exactly one of dit_config (train from scratch) and init_weights (fine-tune)")
        if self.lora_rank < 0 or self.lora_alpha < 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_rank and lora_alpha must not be negative, lora_dropout in [0, 1)")
        if self.lora_rank and not self.init_weights:
            raise ConfigError("LoRA fine-tunes pretrained weights: set init_weights")
        if self.ema_every < 1:
            raise ConfigError(f"ema_every={self.ema_every}: must be at least 1")
        try:
            get_variant(self.variant)
            objective = self.objective()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if objective.num_stages != get_variant(self.variant).num_stages:
            raise ConfigError(f"sample_ratios={self.sample_ratios}: {self.variant} has "
                              f"{get_variant(self.variant).num_stages} stages, give one ratio per stage")
        if self.batch_size % objective.num_columns:
            raise ConfigError(f"batch_size={self.batch_size} must be a multiple of sum(sample_ratios)="
                              f"{objective.num_columns} (every stage column needs the same batch)")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def build_dit(cfg: DiTTrainConfig) -> torch.nn.Module:
    """The DiT to train (fp32 master weights), with LoRA and gradient checkpointing as configured."""
    if cfg.init_weights:
        dit = load_dit(cfg.init_weights, dtype="fp32")
    else:
        path = Path(cfg.dit_config)
        config = json.loads(path.read_text()) if path.suffix == ".json" and path.is_file() else read_config(path)
        if config is None or config.get("_class_name") not in DIT_CLASSES:
            raise ConfigError(f"dit_config={cfg.dit_config!r}: needs a config.json with _class_name one of "
                              f"{sorted(DIT_CLASSES)}")
        dit = DIT_CLASSES[config["_class_name"]].from_config(config)
    if cfg.lora_rank:
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha or None, cfg.lora_dropout)
    else:
        dit.requires_grad_(True)
    if cfg.gradient_checkpointing:
        dit.enable_gradient_checkpointing()
    return dit.train()


def check_buckets(bucket_keys, objective: PyramidObjective) -> None:
    """Reject latent sizes the pyramid cannot halve before the first step (clear message)."""
    for frames, h, w in sorted(set(bucket_keys)):
        check_training_latents(torch.empty(objective.num_columns, 16, frames, h, w, device="meta"), objective)


def text_batch(batch: dict[str, Any], device: torch.device) -> TextBatch:
    """Collated text features ``(N, 1, L, D)`` etc. (one saved row per sample) -> a :class:`TextBatch`."""
    n = len(batch["text"])
    embeds = batch["prompt_embed"].reshape(n, *batch["prompt_embed"].shape[-2:])
    return TextBatch(embeds.float(), batch["prompt_attention_mask"].reshape(n, -1).long(),
                     batch["pooled_prompt_embed"].reshape(n, -1).float()).to(device)


def null_text_features(cfg: DiTTrainConfig, like: TextBatch) -> TextBatch:
    """The text a dropped sample gets (see the module doc), one row shaped like ``like``."""
    if cfg.null_text_fea:
        features = torch.load(cfg.null_text_fea, map_location="cpu", weights_only=True)
        null = TextBatch(features["prompt_embed"].reshape(1, *like.embeds.shape[1:]).float(),
                         features["prompt_attention_mask"].reshape(1, -1).long(),
                         features["pooled_prompt_embed"].reshape(1, -1).float())
        return null.to(like.embeds.device)
    mask = torch.zeros_like(like.mask[:1])
    mask[:, 0] = 1
    return TextBatch(torch.zeros_like(like.embeds[:1]), mask, torch.zeros_like(like.pooled[:1]))


def lr_factor(step: int, cfg: DiTTrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def autocast(cfg: DiTTrainConfig, device: torch.device):
    if cfg.mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, inputs, optimizer, scheduler, params, cfg: DiTTrainConfig, device,
               guard: NonFiniteGuard, step: int) -> dict[str, float] | None:
    """One forward/backward/update on a :class:`~.dit_objective.TrainingBatch`.

    Returns the step's metrics, or None when ``guard`` found the loss or the gradient norm
    not finite: then neither the optimizer nor the LR scheduler moved. ``step`` is the step
    being attempted (1-based), for the guard's log line.
    """
    with autocast(cfg, device):
        predictions = model(**inputs.dit_kwargs())
    loss = flow_matching_loss(predictions, inputs.targets)  # fp32
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clipped_grad_norm(params, cfg.grad_clip)
    if not guard.check(step, loss=loss.detach(), grad_norm=grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    scheduler.step()
    return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}


def trained_tensors(model, ema: EMA | None) -> list[torch.Tensor]:
    """The trained parameters and their EMA: what must be finite before anything is written."""
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    return params + (list(ema.shadow.values()) if ema is not None else [])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trained tensors only (all weights, or just the adapters): what a checkpoint needs."""
    names = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
    return {k: v for k, v in model_state_dict(model).items() if k in names}


def checkpoint_state(model, optimizer, scheduler, ema, generator, cfg, best_loss: float, batches: int) -> dict:
    return {
        "config": cfg.to_dict(),
        "model_config": {k: v for k, v in dict(unwrap(model).config).items() if not k.startswith("_")},
        "model": trainable_state(model),
        "optimizer": optimizer_state_dict(model, optimizer),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
        "generator": generator.get_state(),
        "data": {"batches": batches},
        "best_loss": best_loss,
    }


def restore_state(state: dict, model, optimizer, scheduler, ema, generator) -> None:
    dit = unwrap(model)
    expected = {n for n, p in dit.named_parameters() if p.requires_grad}
    if set(state["model"]) != expected:
        raise ValueError("the checkpoint's trained tensors do not match this model (changed lora_rank or "
                         "architecture?); start a new output_dir or set resume='none'")
    dit.load_state_dict(state["model"], strict=False)
    load_optimizer_state_dict(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    generator.set_state(state["generator"])


def export_dit(model, ema: EMA | None, out: Path, cfg: DiTTrainConfig, info: DistInfo) -> Path:
    """LoRA file or official ``diffusion_transformer`` folder (EMA weights when configured)."""
    dit = unwrap(model)
    state = model_state_dict(model)  # collective under FSDP
    if ema is not None and cfg.export_ema:
        state = ema.averaged_state_dict(state)
    if not info.is_main:
        return out
    if cfg.lora_rank:
        return export_lora(dit, out / "lora.safetensors", state)
    return export_diffusers_folder(state, dict(dit.config), out / "diffusion_transformer", type(dit).__name__)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def train_dit(cfg: DiTTrainConfig) -> dict[str, Any]:
    """Train (or resume) a DiT; returns ``step``, ``first_loss``, ``last_loss``, ``best_loss``, ``export``."""
    info = init_distributed(cfg.device or None)
    setup_logging(info)
    out = Path(cfg.output_dir)
    objective, variant = cfg.objective(), get_variant(cfg.variant)
    if (cfg.batch_size // info.world_size) % objective.num_columns:
        raise ConfigError(f"batch_size={cfg.batch_size} over {info.world_size} ranks: each rank's share must be "
                          f"a multiple of sum(sample_ratios)={objective.num_columns}")
    dataset = LatentDataset(cfg.anno_files, cfg.max_latent_frames, data_root=cfg.data_root)
    check_buckets(dataset.bucket_keys, objective)
    scheduler = PyramidFlowScheduler.from_variant(variant)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    dit = build_dit(cfg).to(info.device)
    # Wrap first: FSDP replaces the parameters, and the optimiser and EMA must hold the new ones.
    model = wrap_model(dit, info, cfg.strategy)
    params = [p for p in dit.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    ema = EMA(dit, cfg.ema_decay) if cfg.ema_decay > 0 else None
    generator = torch.Generator(info.device).manual_seed(cfg.seed * 1000 + info.rank)  # noise, timesteps, dropout
    manager = CheckpointManager(out / "checkpoints", cfg.keep_last)
    guard = NonFiniteGuard("DiT", cfg.max_nonfinite_steps, info, manager.latest)
    step, used, best_loss, null_text = 0, 0, float("inf"), None   # used: batches drawn, skipped steps' too
    resume_path = resolve_resume(cfg.resume, manager)
    if resume_path is not None:
        state = load_training_checkpoint(resume_path)
        restore_state(state, model, optimizer, lr_sched, ema, generator)
        step, best_loss = state["step"], state["best_loss"]
        used = state.get("data", {}).get("batches", step)
        log.info("resumed from %s at step %d", resume_path, step)
    metrics = MetricLogger(out, METRICS, info.is_main, step if resume_path else None, cfg.tensorboard)
    batches = make_loader(dataset, cfg.batch_size, cfg.seed, info.rank, info.world_size, used, cfg.num_workers)
    first_loss = last_loss = None
    tick = time.perf_counter()
    while step < cfg.max_steps:
        batch = next(batches)
        used += 1
        latents = batch["latent"].to(info.device)
        latents = latents if cfg.latents_normalized else normalize_latents(latents, variant)
        text = text_batch(batch, info.device)
        null_text = null_text if null_text is not None else null_text_features(cfg, text)
        inputs = build_training_batch(latents, text, objective, scheduler, null_text=null_text,
                                      generator=generator, step=step, rank=info.rank)
        logs = train_step(model, inputs, optimizer, lr_sched, params, cfg, info.device, guard, step + 1)
        if logs is None:
            continue  # not finite: no update, no EMA, the step is tried again on the next batch
        step += 1
        if ema is not None and step % cfg.ema_every == 0:
            ema.update(dit)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            logs = all_reduce_mean(logs, info)
            logs.update(frames=latents.shape[2], skipped=batch.get("skipped", 0), nonfinite=guard.take_count(),
                        sec_per_step=(time.perf_counter() - tick) / cfg.log_every)
            metrics.log(step, logs)
            first_loss = logs["loss"] if first_loss is None else first_loss
            last_loss, best_loss = logs["loss"], min(best_loss, logs["loss"])
            log.info("step %d loss %.4f grad_norm %.3f", step, logs["loss"], logs["grad_norm"])
            tick = time.perf_counter()
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            guard.check_weights(step, trained_tensors(model, ema))
            state = checkpoint_state(model, optimizer, lr_sched, ema, generator, cfg, best_loss, used)
            if info.is_main:
                manager.save(step, state)
    guard.check_weights(step, trained_tensors(model, ema))
    export = export_dit(model, ema, out, cfg, info)
    metrics.close()
    cleanup()
    return {"step": step, "first_loss": first_loss, "last_loss": last_loss, "best_loss": best_loss,
            "export": str(export), "skipped_rows": dict(dataset.skipped)}
