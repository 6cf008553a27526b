"""Two CPU processes (torchrun, gloo) follow the same loss curve as one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pyramid_core.training.config import VAETrainConfig, config_from_dict
from pyramid_core.training.distributed import DistInfo, all_reduce_mean, init_distributed, wrap_model
from pyramid_core.training.logs import read_metrics
from pyramid_core.training.synthetic import make_moving_shapes
from pyramid_core.training.vae_trainer import train_vae
from support import torchrun

REPO = Path(__file__).resolve().parents[2]
VAE_CONFIG = REPO / "tests" / "data" / "golden" / "config_vae_tiny.json"
STEPS = 5


def _config(root: Path, anno: Path, out: Path, **extra) -> dict:
    # deterministic posterior (no per-rank noise) and no GAN: the curves must then agree
    return {"anno_files": [str(anno)], "data_root": str(root), "width": 16, "height": 16, "num_frames": 9,
            "fps": 8.0, "batch_size": 4, "max_steps": STEPS, "lr": 5e-3, "vae_config": str(VAE_CONFIG),
            "output_dir": str(out), "device": "cpu", "tensorboard": False, "disc_weight": 0.0,
            "sample_posterior": False, "log_every": 1, "save_every": 1000, **extra}


def _torchrun(cfg_path: Path) -> None:
    done = torchrun(2, "-m", "pyramid_core.training.cli", "train-vae", "--config", str(cfg_path), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    anno = make_moving_shapes(root / "data", num_videos=8, num_images=4, width=16, height=16, num_frames=9, fps=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_vae(config_from_dict(VAETrainConfig, _config(root / "data", anno, root / "single")))
    finally:
        torch.set_num_threads(threads)
    return root, anno, [r["loss"] for r in read_metrics(root / "single" / "metrics.csv")]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(single_run, strategy):
    root, anno, single = single_run
    cfg_path = root / f"{strategy}.json"
    cfg_path.write_text(json.dumps(_config(root / "data", anno, root / strategy, strategy=strategy)))
    _torchrun(cfg_path)
    double = [r["loss"] for r in read_metrics(root / strategy / "metrics.csv")]
    print("1 process:", [f"{v:.5f}" for v in single], "\n2 processes:", [f"{v:.5f}" for v in double])
    assert len(double) == STEPS and len(set(single)) == STEPS  # weights change every step
    assert double == pytest.approx(single, rel=1e-3)
    assert (root / strategy / "causal_video_vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_alone_the_helpers_are_no_ops(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.distributed
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, info, "fsdp") is model
    assert all_reduce_mean({"loss": 1.5}, info) == {"loss": 1.5}
