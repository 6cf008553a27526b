"""benchmarks/gpu_check.py on a machine without CUDA: its arguments, the real sequence shapes
it measures at, and the report layout. (Its GPU figures come from a run on a lent GPU.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_arguments():
    args = gpu_check.parse_args(["--budget", "120", "--skip", "t2v_768p", "model_load"])
    assert args.budget == 120 and args.skip == ["t2v_768p", "model_load"]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--skip", "everything"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget", "0"])


@pytest.mark.parametrize("resolution, latent, frames", [("384p", (48, 80), 16), ("768p", (96, 160), 31)])
def test_the_sequences_are_those_of_the_last_unit_of_a_video(resolution, latent, frames):
    """Per CFG row: the valid text, then the history (the previous frame at full size, the one
    before at half size, all older ones at a quarter), then the noisy frame at full size."""
    cu, frame_ids = gpu_check.sequence_layout(resolution)
    h, w = latent[0] // 2, latent[1] // 2                       # 2x2 patches
    per_row = gpu_check.VALID_TEXT + h * w + h * w // 4 + (frames - 3) * (h * w // 16) + h * w
    assert cu.tolist() == [0, per_row, 2 * per_row]
    assert frame_ids.dtype == torch.int32 and frame_ids.shape == (2 * per_row,)
    row = frame_ids[:per_row]
    assert (row[:gpu_check.VALID_TEXT] == 0).all() and int(row.max()) == frames - 1
    assert bool((row[1:] >= row[:-1]).all())                    # frames never go back in time
    q, k, v, cu2, frames2 = gpu_check.attention_inputs(resolution, torch.float32, "cpu")
    assert q.shape == (2 * per_row, gpu_check.HEADS, gpu_check.HEAD_DIM) and torch.equal(cu2, cu)


def test_report_layout_and_name():
    report = {"schema": gpu_check.SCHEMA, "created": "2026-11-29T10:00:00+00:00", "budget_seconds": 330,
              "sections": {"environment": {"seconds": 0.1, "gpu": "NVIDIA H200"},
                           "t2v_768p": {"skipped": "--skip"}, "model_load": {"seconds": 3, "error": "x"}}}
    gpu_check.validate_report(report)
    for broken in ({**report, "schema": "other"}, {**report, "sections": {"warp": {"seconds": 1}}},
                   {**report, "sections": {"vae_decode": {"peak_gib": 1}}}):
        with pytest.raises(ValueError):
            gpu_check.validate_report(broken)
    import datetime as dt

    path = gpu_check.report_path(Path("out"), "NVIDIA H200 NVL", dt.datetime(2026, 11, 29))
    assert path == Path("out/gpu_check_nvidia-h200-nvl_2026-11-29.json")


def test_the_video_under_a_cap_runs_end_to_end_with_tiny_models(tmp_path):
    """gpu_check's memory_caps section runs this script on the GPU; here it runs on the CPU with
    the tiny models (fp8 weights, block swap, auto VAE tiles), so a broken call shows here."""
    import json
    import subprocess
    import sys

    from support import REPO_ROOT

    golden = REPO_ROOT / "tests" / "data" / "golden"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "video_under_cap.py"),
                           str(golden / "weights_flux_tiny.safetensors"), "--device", "cpu", "--resolution", "tiny",
                           "--seconds", "0.4", "--steps", "1,1,1", "--video-steps", "1,1,1", "--weights", "fp8_e4m3fn",
                           "--block-swap", "1", "--vae-config", str(golden / "config_vae_tiny.json")],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["complete"] and set(result["phase"]) == {"load", "sampling", "decode"}
    assert result["tile_size"] is None and result["predicted_whole_frame_gib"] > 0


def test_child_processes_keep_the_callers_pythonpath(monkeypatch):
    # The GPU image brings diffusers and av through PYTHONPATH: a child that replaced it
    # could not import the models (issue 26).
    monkeypatch.setenv("PYTHONPATH", "/opt/extra")
    path = gpu_check.child_env()["PYTHONPATH"].split(os.pathsep)
    assert path == [str(gpu_check.ROOT), "/opt/extra"]
    monkeypatch.delenv("PYTHONPATH")
    assert gpu_check.child_env()["PYTHONPATH"] == str(gpu_check.ROOT)


def test_the_training_steps_run_on_the_cpu_with_tiny_models():
    """gpu_check's training section times these on the GPU at full size; here they run with the
    tiny models, so a broken call shows without a GPU."""
    import json

    from pyramid_core.models import PyramidFluxTransformer
    from pyramid_core.models.vae import CausalVideoVAE
    from support import REPO_ROOT

    torch.manual_seed(0)
    dit = PyramidFluxTransformer(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                 joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6)).train()
    far = float("inf")
    cpu = torch.device("cpu")
    step = gpu_check.dit_training_step(dit, (3, 8, 8), "sdpa", cpu, far, steps=1)
    assert step["attention"] == "sdpa" and step["steps"] == 1 and step["seconds_per_step"] > 0
    config = json.loads((REPO_ROOT / "tests" / "data" / "golden" / "config_vae_tiny.json").read_text())
    vae = CausalVideoVAE.from_config(config).train()
    step = gpu_check.vae_training_step(vae, 9, 32, cpu, far, steps=1)
    assert step["clip"] == [9, 32, 32] and step["steps"] == 1 and step["peak_gib"] is None
