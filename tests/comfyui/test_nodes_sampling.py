"""The sampling nodes on the real ComfyUI: graphs agree, Cancel stops within a step, bad input
is refused with a clear message, LoRAs patch the DiT."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_harness import ComfyUIError, output_files

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models, next to this file
from tiny_models import load_api_workflow, shrink, write_tiny_lora, write_tiny_vae  # noqa: E402,F401


def _saved_latent(server, entry) -> torch.Tensor:
    files = [f for f in output_files(entry) if f["filename"].endswith(".latent")]
    assert len(files) == 1, output_files(entry)
    return load_file(str(server.output_dir / files[0]["subfolder"] / files[0]["filename"]))["latent_tensor"]


def _run_to_latent(server, prompt: dict, source: str) -> torch.Tensor:
    prompt = {k: v for k, v in prompt.items() if k not in ("20", "21", "22")}   # no decoding needed
    prompt["30"] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0], "filename_prefix": "latents/t"}}
    return _saved_latent(server, server.run(prompt, timeout=240))


def _error(entry) -> str:
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, entry["status"]["messages"]
    return errors[0]["exception_message"]


def test_per_stage_graph_and_unit_sampler_give_the_video_samplers_latents(tiny_comfyui):
    whole = _run_to_latent(tiny_comfyui, shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=11), "10")
    staged_prompt = shrink(load_api_workflow("pyramid_flow_t2v_per_stage"), seed=11)
    staged = _run_to_latent(tiny_comfyui, staged_prompt, "16")
    assert whole.shape == (1, 16, 2, 8, 16)
    torch.testing.assert_close(staged, whole, rtol=1e-4, atol=1e-4)

    # The same first frame, then the second unit from a Temporal History and a Unit Sampler.
    staged_prompt["15"] = {"class_type": "PyramidFlowHistory",
                           "inputs": {"samples": ["14", 0], "recent_units": 1, "max_frames": 0}}
    staged_prompt["16"] = {"class_type": "PyramidFlowUnitSampler", "inputs": {
        "dit": ["2", 0], "conditioning": ["4", 0], "latent": ["5", 0], "history": ["15", 0],
        "steps_stage1": 1, "steps_stage2": 1, "steps_stage3": 1, "guidance_scale": 5.0, "seed": 11}}
    by_units = _run_to_latent(tiny_comfyui, staged_prompt, "16")
    torch.testing.assert_close(by_units, whole, rtol=1e-4, atol=1e-4)


def test_cancel_stops_sampling_within_a_step_and_the_next_prompt_runs(tiny_comfyui):
    prompt = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=int(time.time()) % 100000)
    prompt["10"]["inputs"].update(first_frame_steps_stage1=400, first_frame_steps_stage2=400,
                                  first_frame_steps_stage3=400)
    prompt_id = tiny_comfyui.submit(prompt)
    deadline = time.monotonic() + 60
    while not tiny_comfyui.get_json("/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)                                  # loaders done, sampler running
    tiny_comfyui.interrupt()
    interrupted_at = time.monotonic()
    entry = tiny_comfyui.wait(prompt_id, timeout=60)
    assert time.monotonic() - interrupted_at < 3.0, "sampling went on after Cancel"
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
    entry = tiny_comfyui.run(shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=3), timeout=240)
    assert entry["status"]["status_str"] == "success"


def test_cancel_stops_a_vae_decode_within_a_chunk(tiny_comfyui):
    """41 latent frames at 256x256 take the tiny VAE about a second each on a 2-core CPU; Cancel
    three seconds in must end the prompt within the chunk being decoded, not at the end."""
    prompt = {
        "1": {"class_type": "PyramidFlowVAELoader",
              "inputs": {"vae_name": "pyramid_flow_vae_bf16.safetensors", "precision": "fp32"}},
        "2": {"class_type": "PyramidFlowEmptyLatent", "inputs": {
            "width": 256, "height": 256, "length": 321, "seconds": 0.0, "batch_size": 1}},
        "3": {"class_type": "PyramidFlowVAEDecode",
              "inputs": {"vae": ["1", 0], "samples": ["2", 0], "chunk_size": 1, "tile_size": 0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    prompt_id = tiny_comfyui.submit(prompt)
    deadline = time.monotonic() + 60
    while not tiny_comfyui.get_json("/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.0)
    tiny_comfyui.interrupt()
    interrupted_at = time.monotonic()
    entry = tiny_comfyui.wait(prompt_id, timeout=300)
    assert time.monotonic() - interrupted_at < 10.0, "decoding went on after Cancel"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])


def test_sizes_whose_latents_cannot_fit_say_what_fits(tiny_comfyui):
    prompt = {"1": {"class_type": "PyramidFlowEmptyLatent", "inputs": {
                  "width": 8192, "height": 8192, "length": 8193, "seconds": 0.0, "batch_size": 64}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/big"}}}
    message = _error(tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=60))
    assert "GiB" in message and "GiB free" in message and "or a batch below 64" in message, message


def test_a_length_in_seconds_that_is_no_number_is_refused(tiny_comfyui):
    prompt = {"1": {"class_type": "PyramidFlowEmptyLatent", "inputs": {
                  "width": 128, "height": 64, "length": 9, "seconds": float("nan"), "batch_size": 1}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/nan"}}}
    message = _error(tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=60))
    assert "seconds=nan" in message, message


def test_size_not_a_multiple_of_64_is_refused_clearly(tiny_comfyui):
    prompt = shrink(load_api_workflow("pyramid_flow_i2v_384p"))
    prompt["7"]["inputs"].update(width=96, height=64)            # the start image: 96 px wide
    message = _error(tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=120))
    assert "multiple of 64" in message


def test_wrong_checkpoint_kind_is_refused_clearly(tiny_comfyui):
    write_tiny_vae(tiny_comfyui.models_dir, "not_a_dit.safetensors", folder="diffusion_models")
    prompt = shrink(load_api_workflow("pyramid_flow_t2v_384p"))
    prompt["2"]["inputs"]["dit_name"] = "not_a_dit.safetensors"
    with pytest.raises(ComfyUIError, match=r"refused \(400\)") as refused:      # when queued, before any node
        tiny_comfyui.submit(prompt)
    assert "'not_a_dit.safetensors' in models/diffusion_models is a causal video VAE" in str(refused.value)
    assert "load this one with the Pyramid Flow VAE Loader" in str(refused.value)


def test_lora_patches_the_dit_and_strength_zero_is_a_no_op(tiny_comfyui):
    write_tiny_lora(tiny_comfyui.models_dir, "tiny_lora.safetensors")
    base = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=5)
    plain = _run_to_latent(tiny_comfyui, base, "10")

    def with_lora(strength):
        prompt = dict(base)
        prompt["9"] = {"class_type": "PyramidFlowLoraLoader",
                       "inputs": {"dit": ["2", 0], "lora_name": "tiny_lora.safetensors", "strength": strength}}
        prompt["10"] = {**base["10"], "inputs": {**base["10"]["inputs"], "dit": ["9", 0]}}
        return _run_to_latent(tiny_comfyui, prompt, "10")

    assert not torch.allclose(with_lora(1.0), plain, atol=1e-3)
    torch.testing.assert_close(with_lora(0.0), plain)
    torch.testing.assert_close(_run_to_latent(tiny_comfyui, base, "10"), plain)   # the loaded DiT is unchanged


def test_a_lora_exported_by_the_trainer_loads_in_the_lora_node(tiny_comfyui):
    """export_lora (alpha != rank) through the LoRA Loader node gives the same video as the
    same LoRA merged by pyramid_core (load_lora_into_dit) into a DiT file."""
    from pyramid_core.loading import load_dit, save_checkpoint
    from pyramid_core.training.lora import add_lora, export_lora, load_lora_into_dit

    dit_file = tiny_comfyui.models_dir / "diffusion_models" / "pyramid_flow_miniflux_bf16_v2.safetensors"
    trained = add_lora(load_dit(dit_file, dtype="fp32"), rank=2, alpha=6.0)
    generator = torch.Generator().manual_seed(3)
    for name, param in trained.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.3
    lora_file = export_lora(trained, tiny_comfyui.models_dir / "loras" / "trained_lora.safetensors")
    merged = load_lora_into_dit(load_dit(dit_file, dtype="fp32"), lora_file, 1.0)
    save_checkpoint(merged, tiny_comfyui.models_dir / "diffusion_models" / "merged_lora.safetensors")

    base = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=9)
    through_node = dict(base)
    through_node["9"] = {"class_type": "PyramidFlowLoraLoader",
                         "inputs": {"dit": ["2", 0], "lora_name": "trained_lora.safetensors", "strength": 1.0}}
    through_node["10"] = {**base["10"], "inputs": {**base["10"]["inputs"], "dit": ["9", 0]}}
    premerged = dict(base)
    premerged["2"] = {**base["2"], "inputs": {**base["2"]["inputs"], "dit_name": "merged_lora.safetensors"}}
    expected = _run_to_latent(tiny_comfyui, premerged, "10")
    assert not torch.allclose(expected, _run_to_latent(tiny_comfyui, base, "10"), atol=1e-3)  # the LoRA matters
    torch.testing.assert_close(_run_to_latent(tiny_comfyui, through_node, "10"), expected, rtol=1e-4, atol=1e-4)


def test_block_swap_gives_the_same_latents_with_and_without_a_lora(tiny_comfyui):
    """The DiT Loader's block_swap streams blocks from host memory (on this CPU-only server the
    'device' is the host, so this proves the plumbing: ComfyUI's LoRA patches applied, then
    taken off again, and the same numbers)."""
    write_tiny_lora(tiny_comfyui.models_dir, "tiny_lora_swap.safetensors")
    base = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=6)
    swapped = {**base, "2": {**base["2"], "inputs": {**base["2"]["inputs"], "block_swap": 2}}}

    def with_lora(prompt):
        prompt = dict(prompt)
        prompt["9"] = {"class_type": "PyramidFlowLoraLoader",
                       "inputs": {"dit": ["2", 0], "lora_name": "tiny_lora_swap.safetensors", "strength": 1.0}}
        prompt["10"] = {**prompt["10"], "inputs": {**prompt["10"]["inputs"], "dit": ["9", 0]}}
        return prompt

    plain = _run_to_latent(tiny_comfyui, base, "10")
    assert torch.equal(_run_to_latent(tiny_comfyui, swapped, "10"), plain)
    lora = _run_to_latent(tiny_comfyui, with_lora(base), "10")
    assert torch.equal(_run_to_latent(tiny_comfyui, with_lora(swapped), "10"), lora)
    assert torch.equal(_run_to_latent(tiny_comfyui, swapped, "10"), plain)          # the patches came off


def test_text_encoders_on_the_cpu_with_fp8_weights_generate(tiny_comfyui):
    base = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=7)
    loader = next(k for k, node in base.items() if node["class_type"] == "PyramidFlowTextEncoderLoader")
    prompt = {**base, loader: {**base[loader], "inputs": {**base[loader]["inputs"], "device": "cpu",
                                                            "precision": "fp8_e4m3fn"}}}
    latents = _run_to_latent(tiny_comfyui, prompt, "10")
    assert torch.isfinite(latents).all() and latents.shape == _run_to_latent(tiny_comfyui, base, "10").shape
