"""Train the causal video VAE: pixel + perceptual + KL, then a PatchGAN after ``disc_start``.

Helpers first, then :func:`train_vae`, whose loop fits one screen: next batch, generator step
(with the adaptive GAN weight), discriminator step, EMA, log, checkpoint. Image and video
batches alternate as the aspect-ratio/frame-count buckets fill (images are 1-frame videos to
the causal VAE). Runs alone or under torchrun (DDP or FSDP); resumes exactly from the last
checkpoint; exports the weights as an official ``causal_video_vae`` folder that
``pyramid_core.loading.load_vae`` reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..loading import read_state_dict
from ..models.vae import CausalVideoVAE
from .checkpoints import (CheckpointManager, export_diffusers_folder, load_training_checkpoint, resolve_resume,
                          rng_state, set_rng_state)
from .config import VAETrainConfig
from .data import PixelDataset, make_loader
from .distributed import (DistInfo, all_reduce_mean, all_reduce_sum, cleanup, init_distributed,
                          load_model_state_dict, load_optimizer_state_dict, model_state_dict,
                          optimizer_state_dict, setup_logging, wrap_model)
from .ema import EMA
from .guard import NonFiniteGuard, clipped_grad_norm
from .logs import MetricLogger, MetricWindow
from .vae_losses import VAELoss, build_vae_loss

log = logging.getLogger("pyramid_core.training")

METRICS = ["loss", "pixel", "perceptual", "kl", "g_loss", "d_weight", "d_loss", "logits_real", "logits_fake",
           "lr", "frames", "skipped", "nonfinite", "sec_per_step"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def read_vae_config(path: str | Path) -> dict[str, Any]:
    """A ``causal_video_vae/config.json`` (or a folder holding one) without the ``_`` keys."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def build_vae(cfg: VAETrainConfig) -> CausalVideoVAE:
    """The architecture of ``cfg.vae_config``, optionally starting from ``cfg.init_weights``."""
    vae = CausalVideoVAE(**read_vae_config(cfg.vae_config))
    if cfg.init_weights:
        vae.load_state_dict(read_state_dict(cfg.init_weights), strict=True)
    if cfg.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    return vae.train()


def lr_factor(step: int, cfg: VAETrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(params, lr: float, cfg: VAETrainConfig):
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))


def average_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """Mean of the gradients over ranks, for the discriminator (kept out of DDP because the
    generator step also runs it, which DDP's one-forward-one-backward bookkeeping forbids)."""
    if not info.distributed:
        return
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= info.world_size


def autocast(cfg: VAETrainConfig, device: torch.device):
    if cfg.mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, vae: CausalVideoVAE, loss_fn: VAELoss, optimizers, schedulers, video: torch.Tensor,
               step: int, cfg: VAETrainConfig, info: DistInfo,
               guards: tuple[NonFiniteGuard, NonFiniteGuard]) -> dict[str, float] | None:
    """One generator update and, once the GAN is on, one discriminator update.

    Each update happens only if its guard finds the loss and gradient norm finite on every
    rank. Returns None when the generator's update was skipped (the step does not count, and
    the discriminator does not learn from its reconstruction); a skipped discriminator update
    alone leaves the step counted with ``d_loss`` etc. at 0.
    """
    opt_g, opt_d = optimizers
    disc = loss_fn.discriminator
    if disc is not None:
        disc.requires_grad_(False)  # the generator step must not train the discriminator
    with autocast(cfg, info.device):
        posterior, recon = model(video, sample_posterior=cfg.sample_posterior)
        # The adaptive weight needs per-parameter grads, which FSDP shards; there it is fixed.
        last = None if cfg.strategy == "fsdp" and info.distributed else vae.decoder.conv_out.conv.weight
        loss, logs = loss_fn.generator_loss(video, recon, posterior, step, last)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clipped_grad_norm(vae.parameters(), cfg.grad_clip)
    if not guards[0].check(step + 1, loss=loss.detach(), grad_norm=grad_norm):
        opt_g.zero_grad(set_to_none=True)
        return None
    opt_g.step()
    schedulers[0].step()
    logs.update(lr=schedulers[0].get_last_lr()[0], d_loss=0.0, logits_real=0.0, logits_fake=0.0)
    if loss_fn.gan_active(step):
        disc.requires_grad_(True)
        d_loss, d_logs = loss_fn.discriminator_loss(video, recon)   # fp32 by itself (see VAELoss)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        average_gradients(disc, info)
        d_norm = clipped_grad_norm(disc.parameters(), cfg.grad_clip)
        if guards[1].check(step + 1, d_loss=d_loss.detach(), grad_norm=d_norm):
            opt_d.step()
            schedulers[1].step()  # the discriminator warms up from disc_start
            logs.update(d_logs)
        else:
            opt_d.zero_grad(set_to_none=True)
    return logs


def check_trained_weights(guards, step: int, vae, loss_fn: VAELoss, ema: EMA | None) -> None:
    """Raise before anything is written if the VAE, its EMA or the discriminator holds NaN or inf."""
    guards[0].check_weights(step, [*vae.parameters(), *(ema.shadow.values() if ema is not None else ())])
    if loss_fn.discriminator is not None:
        guards[1].check_weights(step, loss_fn.discriminator.parameters())


def checkpoint_state(model, vae, loss_fn, optimizers, schedulers, ema, cfg, best_loss: float, batches: int) -> dict:
    """Everything a resume needs (collective under FSDP: call on every rank)."""
    disc = loss_fn.discriminator
    return {
        "config": cfg.to_dict(),
        "model_config": dict(read_vae_config(cfg.vae_config)),
        "model": model_state_dict(model),
        "optimizer": optimizer_state_dict(model, optimizers[0]),
        "scheduler": schedulers[0].state_dict(),
        "discriminator": disc.state_dict() if disc is not None else None,
        "disc_optimizer": optimizers[1].state_dict() if disc is not None else None,
        "disc_scheduler": schedulers[1].state_dict() if disc is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
        "data": {"batches": batches},
        "best_loss": best_loss,
    }


def restore_state(state: dict, model, loss_fn, optimizers, schedulers, ema) -> None:
    load_model_state_dict(model, state["model"])
    load_optimizer_state_dict(model, optimizers[0], state["optimizer"])
    schedulers[0].load_state_dict(state["scheduler"])
    if loss_fn.discriminator is not None:
        if state["discriminator"] is None:
            raise ValueError("the checkpoint was trained without a discriminator; keep disc_weight=0")
        loss_fn.discriminator.load_state_dict(state["discriminator"])
        optimizers[1].load_state_dict(state["disc_optimizer"])
        schedulers[1].load_state_dict(state["disc_scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])


def export_vae(model, vae: CausalVideoVAE, ema: EMA | None, folder: Path, use_ema: bool, info: DistInfo) -> Path:
    """The trained (or EMA) weights as an official ``causal_video_vae`` folder (written by rank 0)."""
    state = model_state_dict(model)  # collective under FSDP
    if ema is not None and use_ema:
        state = ema.averaged_state_dict(state)
    if info.is_main:
        export_diffusers_folder(state, dict(vae.config), folder, "CausalVideoVAE")
    return folder


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def train_vae(cfg: VAETrainConfig) -> dict[str, Any]:
    """Train (or resume) a VAE; returns ``step``, ``first_loss``, ``last_loss``, ``best_loss``, ``export``."""
    info = init_distributed(cfg.device or None)
    setup_logging(info)
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    dataset = PixelDataset(cfg.anno_files, cfg.frame_buckets(), cfg.num_frames, cfg.fps, cfg.data_root)
    vae = build_vae(cfg).to(info.device)
    loss_fn = build_vae_loss(cfg).to(info.device)
    model = wrap_model(vae, info, cfg.strategy)  # before the optimizer: FSDP replaces the parameters
    opt_g, sched_g = make_optimizer(vae.parameters(), cfg.lr, cfg)
    opt_d, sched_d = make_optimizer(loss_fn.discriminator.parameters(), cfg.lr_disc, cfg) \
        if loss_fn.discriminator is not None else (None, None)
    optimizers, schedulers = (opt_g, opt_d), (sched_g, sched_d)
    ema = EMA(vae, cfg.ema_decay) if cfg.ema_decay > 0 else None
    manager = CheckpointManager(out / "checkpoints", cfg.keep_last)
    torch.manual_seed(cfg.seed + info.rank)  # per-rank posterior noise
    guards = (NonFiniteGuard("generator", cfg.max_nonfinite_steps, info, manager.latest),
              NonFiniteGuard("discriminator", cfg.max_nonfinite_steps, info, manager.latest))
    step, used, best_loss = 0, 0, float("inf")   # used: batches drawn, skipped steps' too
    resume_path = resolve_resume(cfg.resume, manager)
    if resume_path is not None:
        state = load_training_checkpoint(resume_path)
        restore_state(state, model, loss_fn, optimizers, schedulers, ema)
        step, best_loss = state["step"], state["best_loss"]
        used = state.get("data", {}).get("batches", step)
        log.info("resumed from %s at step %d", resume_path, step)
    metrics = MetricLogger(out, METRICS, info.is_main, step if resume_path else None, cfg.tensorboard)
    batches = make_loader(dataset, cfg.batch_size, cfg.seed, info.rank, info.world_size, used, cfg.num_workers)
    first_loss = last_loss = None
    window, tick = MetricWindow(), time.perf_counter()
    while step < cfg.max_steps:
        batch = next(batches)
        used += 1
        video = batch["pixels"].to(info.device)
        logs = train_step(model, vae, loss_fn, optimizers, schedulers, video, step, cfg, info, guards)
        if logs is None:
            continue  # not finite: no update, no EMA, the step is tried again on the next batch
        step += 1
        if ema is not None:
            ema.update(vae)
        window.add(logs, frames=video.shape[2], skipped=batch["skipped"])
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            logs = all_reduce_mean(window.mean(), info)  # means over the interval and the ranks
            logs.update(skipped=all_reduce_sum(window.skipped, info), sec_per_step=window.seconds(tick),
                        nonfinite=sum(g.take_count() for g in guards))   # the same on every rank
            metrics.log(step, logs)
            first_loss = logs["loss"] if first_loss is None else first_loss
            last_loss, best_loss = logs["loss"], min(best_loss, logs["loss"])
            log.info("step %d loss %.4f pixel %.4f perceptual %.4f kl %.1f", step, logs["loss"], logs["pixel"],
                     logs["perceptual"], logs["kl"])
            window, tick = MetricWindow(), time.perf_counter()
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            check_trained_weights(guards, step, vae, loss_fn, ema)
            state = checkpoint_state(model, vae, loss_fn, optimizers, schedulers, ema, cfg, best_loss, used)
            if info.is_main:
                manager.save(step, state)
    check_trained_weights(guards, step, vae, loss_fn, ema)
    export = export_vae(model, vae, ema, out / "causal_video_vae", cfg.export_ema, info)
    metrics.close()
    cleanup()
    return {"step": step, "first_loss": first_loss, "last_loss": last_loss, "best_loss": best_loss,
            "export": str(export), "skipped_rows": dict(dataset.skipped)}
