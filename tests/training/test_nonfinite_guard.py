"""Updates that are not finite are skipped, never applied; a run that keeps producing them stops
and names its last good checkpoint; no checkpoint ever holds NaN or inf.

A NaN is injected into one parameter's gradient at chosen attempts (a gradient hook), the
way a bf16 kernel that overflows on some hardware would produce it.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pyramid_core.training.dit_trainer as dit_trainer
import pyramid_core.training.vae_trainer as vae_trainer
from pyramid_core.distributed import DistInfo
from pyramid_core.training.checkpoints import load_training_checkpoint
from pyramid_core.training.config import VAETrainConfig, config_from_dict
from pyramid_core.training.guard import NonFiniteError, NonFiniteGuard
from pyramid_core.training.logs import read_metrics
from pyramid_core.training.synthetic import make_moving_shapes
from support import torchrun

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_dit_training, next to this file
from test_dit_training import tiny_config as tiny_dit_config  # noqa: E402

VAE_CONFIG = Path(__file__).resolve().parents[1] / "data" / "golden" / "config_vae_tiny.json"


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/training/conftest.py


class Spy:
    """Records the optimizers and EMAs a trainer builds, and poisons one parameter at chosen attempts."""

    def __init__(self, monkeypatch, trainer, build: str, nan_grad_at=(), inf_weight_at=()):
        self.optimizers, self.schedulers, self.emas, self.attempt, self.model = [], [], [], 0, None
        spy = self

        class AdamW(torch.optim.AdamW):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spy.optimizers.append(self)

        class LambdaLR(torch.optim.lr_scheduler.LambdaLR):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spy.schedulers.append(self)

        class EMA(trainer.EMA):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spy.emas.append(self)

        original_build = getattr(trainer, build)

        def build_and_hook(cfg):
            model = spy.model = original_build(cfg)
            name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)

            def hook(grad):   # once per backward: one attempted step
                spy.attempt += 1
                if spy.attempt in inf_weight_at:
                    param.data.fill_(float("inf"))   # the update itself goes wrong, gradients stay finite
                return grad * float("nan") if spy.attempt in nan_grad_at else grad

            param.register_hook(hook)
            return model

        monkeypatch.setattr(torch.optim, "AdamW", AdamW)
        monkeypatch.setattr(torch.optim.lr_scheduler, "LambdaLR", LambdaLR)
        monkeypatch.setattr(trainer, "EMA", EMA)
        monkeypatch.setattr(trainer, build, build_and_hook)

    def assert_state_is(self, checkpoint: Path) -> None:
        """The model, EMA, optimizer and LR scheduler in memory equal those saved in ``checkpoint``."""
        state = load_training_checkpoint(checkpoint)
        live = self.model.state_dict()
        assert all(torch.equal(live[k], v) for k, v in state["model"].items())
        assert all(torch.equal(self.emas[0].shadow[k], v) for k, v in state["ema"]["shadow"].items())
        saved_opt, live_opt = state["optimizer"]["state"], self.optimizers[0].state_dict()["state"]
        assert saved_opt.keys() == live_opt.keys()
        assert all(torch.equal(live_opt[i][key], saved_opt[i][key]) for i in saved_opt for key in saved_opt[i])
        assert self.schedulers[0].state_dict()["last_epoch"] == state["scheduler"]["last_epoch"]


def test_dit_skips_nonfinite_updates_and_stops_after_n_in_a_row(tmp_path, monkeypatch, caplog):
    """Steps 1 and 2 apply; every later gradient is NaN. Attempts 3 and 4 change nothing
    (weights, EMA, optimizer, scheduler all as checkpoint 2 holds them), and the second skip in
    a row stops the run with the checkpoint to resume from."""
    spy = Spy(monkeypatch, dit_trainer, "build_dit", nan_grad_at=range(3, 100))
    cfg = tiny_dit_config(tmp_path, "flux", max_steps=10, save_every=1, ema_decay=0.9, max_nonfinite_steps=2)
    with caplog.at_level(logging.WARNING, "pyramid_core.training"), pytest.raises(NonFiniteError) as stopped:
        dit_trainer.train_dit(cfg)
    last_good = Path(cfg.output_dir) / "checkpoints" / "step-00000002.pt"
    assert "step 3: 2 DiT updates in a row were not finite" in str(stopped.value)
    assert str(last_good) in str(stopped.value)
    assert spy.attempt == 4
    spy.assert_state_is(last_good)
    assert sorted(p.name for p in last_good.parent.iterdir()) == ["step-00000001.pt", "step-00000002.pt"]
    skips = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(skips) == 2 and skips[0].startswith("step 3: DiT update skipped") and "grad_norm nan" in skips[0]
    assert "1 in a row" in skips[0] and "2 in a row" in skips[1]


def test_dit_run_goes_on_after_one_skipped_update(tmp_path, monkeypatch):
    """One NaN gradient costs one batch, not the run: all max_steps updates happen, the
    metrics count the skip on the row of the step that followed it, and everything is finite."""
    spy = Spy(monkeypatch, dit_trainer, "build_dit", nan_grad_at={3})
    cfg = tiny_dit_config(tmp_path, "flux", max_steps=5, ema_decay=0.9)
    result = dit_trainer.train_dit(cfg)
    rows = read_metrics(Path(cfg.output_dir) / "metrics.csv")
    assert result["step"] == 5 and spy.attempt == 6
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["nonfinite"] for r in rows] == [0, 0, 1, 0, 0]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in rows)
    assert all(torch.isfinite(v).all() for v in spy.emas[0].shadow.values())


def test_dit_resume_after_a_skip_draws_the_batches_an_unbroken_run_draws(tmp_path, monkeypatch):
    """A skipped step still used its batch: the checkpoint records batches drawn, not steps."""
    Spy(monkeypatch, dit_trainer, "build_dit", nan_grad_at={2})
    cfg = tiny_dit_config(tmp_path, "flux", max_steps=3, save_every=3)
    dit_trainer.train_dit(cfg)
    state = load_training_checkpoint(Path(cfg.output_dir) / "checkpoints" / "step-00000003.pt")
    assert state["step"] == 3 and state["data"]["batches"] == 4


def _vae_config(tmp_path: Path, **overrides) -> VAETrainConfig:
    root = tmp_path / "shapes"
    anno = make_moving_shapes(root, num_videos=4, num_images=4, width=16, height=16, num_frames=9, fps=8)
    return config_from_dict(VAETrainConfig, {
        "anno_files": [str(anno)], "data_root": str(root), "width": 16, "height": 16, "num_frames": 9, "fps": 8.0,
        "batch_size": 2, "lr": 1e-2, "vae_config": str(VAE_CONFIG), "output_dir": str(tmp_path / "run"),
        "device": "cpu", "tensorboard": False, "disc_layers": 2, "disc_channels": 8, "disc_start": 10_000,
        "log_every": 1, "save_every": 1000, "ema_decay": 0.9, **overrides})


def test_vae_skips_nonfinite_updates_and_stops_after_n_in_a_row(tmp_path, monkeypatch):
    spy = Spy(monkeypatch, vae_trainer, "build_vae", nan_grad_at=range(3, 100))
    cfg = _vae_config(tmp_path, max_steps=10, save_every=1, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteError, match="step 3: 3 generator updates in a row were not finite"):
        vae_trainer.train_vae(cfg)
    assert spy.attempt == 5
    spy.assert_state_is(Path(cfg.output_dir) / "checkpoints" / "step-00000002.pt")


def test_vae_run_goes_on_after_one_skipped_update(tmp_path, monkeypatch):
    spy = Spy(monkeypatch, vae_trainer, "build_vae", nan_grad_at={2})
    cfg = _vae_config(tmp_path, max_steps=4, disc_start=1, disc_type="3d")
    vae_trainer.train_vae(cfg)
    rows = read_metrics(Path(cfg.output_dir) / "metrics.csv")
    assert spy.attempt == 5 and [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["nonfinite"] for r in rows] == [0, 1, 0, 0]
    assert all(r["d_loss"] > 0 for r in rows[1:])
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)


def test_a_nonfinite_discriminator_update_is_skipped_alone(tmp_path, monkeypatch):
    """The discriminator has a guard of its own: its NaN gradient at the second GAN step skips
    only its update (that row's d_loss stays 0); the generator's step counts."""
    calls = {"n": 0}
    build = vae_trainer.build_vae_loss

    def build_and_hook(cfg):
        loss_fn = build(cfg)
        first = next(loss_fn.discriminator.parameters())

        def hook(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] == 2 else grad

        first.register_hook(hook)
        return loss_fn

    monkeypatch.setattr(vae_trainer, "build_vae_loss", build_and_hook)
    cfg = _vae_config(tmp_path, max_steps=4, disc_start=1)
    vae_trainer.train_vae(cfg)
    rows = read_metrics(Path(cfg.output_dir) / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and calls["n"] == 3
    assert [r["nonfinite"] for r in rows] == [0, 0, 1, 0]
    assert rows[2]["d_loss"] == 0 and rows[1]["d_loss"] > 0 and rows[3]["d_loss"] > 0
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)


@pytest.mark.parametrize("trainer", ["dit", "vae"])
def test_weights_that_are_not_finite_are_never_written(tmp_path, monkeypatch, trainer):
    """Finite gradients, but the weights go to inf at attempt 3: the checkpoint of step 3 is
    not written, and the error names checkpoint 2."""
    if trainer == "dit":
        Spy(monkeypatch, dit_trainer, "build_dit", inf_weight_at={3})
        cfg = tiny_dit_config(tmp_path, "flux", max_steps=5, save_every=1, ema_decay=0.9)
        run = dit_trainer.train_dit
    else:
        Spy(monkeypatch, vae_trainer, "build_vae", inf_weight_at={3})
        cfg = _vae_config(tmp_path, max_steps=5, save_every=1)
        run = vae_trainer.train_vae
    with pytest.raises(NonFiniteError, match="step 3: the .* weights are not finite, so nothing was written") as err:
        run(cfg)
    folder = Path(cfg.output_dir) / "checkpoints"
    assert str(folder / "step-00000002.pt") in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001.pt", "step-00000002.pt"]


def test_every_rank_takes_the_same_decision(tmp_path):
    """Under torchrun a NaN on one rank skips the update on all of them (the guard all-reduces)."""
    script = tmp_path / "guard_worker.py"
    script.write_text(textwrap.dedent("""
        import torch
        from pyramid_core.distributed import cleanup, init_distributed
        from pyramid_core.training.guard import NonFiniteGuard

        info = init_distributed("cpu")
        guard = NonFiniteGuard("DiT", 5, info)
        for step, bad_rank in enumerate([None, 1, 0, None], start=1):
            loss = torch.tensor(float("nan") if info.rank == bad_rank else 1.0)
            print(f"rank {info.rank} step {step} applies {guard.check(step, loss=loss, grad_norm=0.5)}", flush=True)
        cleanup()
    """))
    done = torchrun(2, str(script), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        for step, applies in [(1, True), (2, False), (3, False), (4, True)]:
            assert f"rank {rank} step {step} applies {applies}" in done.stdout, done.stdout


def test_a_guard_alone_counts_and_stops():
    guard = NonFiniteGuard("DiT", 2, DistInfo())
    assert guard.check(1, loss=torch.tensor(0.5), grad_norm=torch.tensor(1.0))
    assert not guard.check(2, loss=torch.tensor(0.5), grad_norm=torch.tensor(float("inf")))
    assert guard.check(3, loss=torch.tensor(0.5), grad_norm=torch.tensor(1.0))   # a good step resets the run
    assert not guard.check(4, loss=float("nan"))
    with pytest.raises(NonFiniteError, match="No checkpoint was written yet"):
        guard.check(5, loss=float("nan"))
    assert guard.total == 3 and guard.take_count() == 3 and guard.take_count() == 0
