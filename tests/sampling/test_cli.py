"""``python -m pyramid_core generate`` on tiny checkpoints written here; mp4s read back with PyAV."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("av")

from pyramid_core.cli import main  # noqa: E402
from pyramid_core.loading import save_checkpoint  # noqa: E402
from pyramid_core.video_io import read_video  # noqa: E402

WORDS = "a the cat dog runs over red blue sky sea tiny test prompt , hyper quality ultra hd 8k".split()


def _tokenizer(specials, template, **special_tokens):
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    core.normalizer = tokenizers.normalizers.Lowercase()
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.post_processor = tokenizers.processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, **special_tokens), vocab


def _write_text_encoders(folder: Path, clip_width: int, t5_width: int) -> None:
    """miniFLUX layout: CLIP-L stand-in (pooled width = DiT pooled dim) + T5 stand-in."""
    torch.manual_seed(0)
    clip_tok, vocab = _tokenizer(["<s>", "</s>", "<pad>", "<unk>"], "<s> $A </s>", bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", unk_token="<unk>", model_max_length=77)
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=clip_width, intermediate_size=2 * clip_width, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2))
    t5_tok, vocab = _tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", eos_token="</s>", pad_token="<pad>",
                               unk_token="<unk>", model_max_length=512)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(vocab), d_model=t5_width, d_ff=32, d_kv=8, num_heads=2, num_layers=1,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    for name, obj in (("tokenizer", clip_tok), ("text_encoder", clip), ("tokenizer_2", t5_tok), ("text_encoder_2", t5)):
        obj.save_pretrained(folder / name)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, golden_models, golden_model_dir):
    """An official-layout model folder and the same models as single files."""
    root = tmp_path_factory.mktemp("cli_models")
    official = root / "pyramid-flow-tiny"
    shutil.copytree(golden_model_dir["flux_tiny"], official / "diffusion_transformer_384p")
    shutil.copytree(golden_model_dir["vae_tiny"], official / "causal_video_vae")
    dit = golden_models("flux_tiny")
    _write_text_encoders(official, dit.config.pooled_projection_dim, dit.config.joint_attention_dim)
    files = dict(dit=save_checkpoint(dit, root / "dit.safetensors"),
                 vae=save_checkpoint(golden_models("vae_tiny"), root / "vae.safetensors"))
    return official, files


COMMON = ["--prompt", "a red cat", "--steps", "1", "--video-steps", "1,1,1", "--dtype", "fp32", "--device", "cpu",
          "--width", "128", "--height", "64", "--seed", "1"]


def test_cli_t2v_then_continue_then_i2v(checkpoints, tmp_path):
    official, files = checkpoints
    t2v = tmp_path / "t2v.mp4"
    assert main(["generate", "t2v", "--model-dir", str(official), "--frames", "9", "--output", str(t2v), *COMMON]) == 0
    frames, fps = read_video(t2v)
    assert frames.shape == (9, 64, 128, 3) and fps == 24

    longer = tmp_path / "continued.mp4"
    assert main(["generate", "continue", "--dit", str(files["dit"]), "--vae", str(files["vae"]),
                 "--text-encoders", str(official), "--video", str(t2v), "--frames", "17",
                 "--history-frames", "2", "--output", str(longer), *COMMON]) == 0
    assert read_video(longer)[0].shape == (17, 64, 128, 3)

    image = tmp_path / "first.png"
    from PIL import Image

    Image.fromarray(frames[0].numpy()).save(image)
    i2v = tmp_path / "i2v.mp4"
    assert main(["generate", "i2v", "--model-dir", str(official), "--image", str(image), "--frames", "9",
                 "--output", str(i2v), *COMMON]) == 0
    assert read_video(i2v)[0].shape == (9, 64, 128, 3)


def test_cli_text_to_image_with_the_image_model(checkpoints, tmp_path, capsys):
    """The 1024p image checkpoint (here the tiny miniFLUX in the official image folder): one
    frame, written as a png; asked for a video it says what to change."""
    official, _ = checkpoints
    release = tmp_path / "pyramid-flow-miniflux"
    release.mkdir()
    for name in ("causal_video_vae", "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"):
        (release / name).symlink_to(official / name, target_is_directory=True)
    (release / "diffusion_transformer_image").symlink_to(official / "diffusion_transformer_384p",
                                                         target_is_directory=True)
    image = tmp_path / "cat.png"
    assert main(["generate", "t2v", "--model-dir", str(release), "--variant", "miniflux-image", "--frames", "1",
                 "--output", str(image), *COMMON]) == 0
    assert "variant miniflux-image: chosen on the node" in capsys.readouterr().err
    from pyramid_core.video_io import read_image

    assert read_image(image).shape == (64, 128, 3)
    assert main(["generate", "t2v", "--model-dir", str(release), "--variant", "miniflux-image", "--frames", "9",
                 *COMMON]) == 2
    assert "miniflux-image makes single images: ask for --frames 1" in capsys.readouterr().err


def test_cli_reports_bad_input_before_loading_models(tmp_path, capsys):
    missing = ["generate", "t2v", "--model-dir", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.mp4")]
    cases = [(["--frames", "10"], "1 + 8k"), (["--width", "100", "--height", "64"], "multiple of 64"),
             (["--steps", "1,2"], "steps has 2 entries"), (["--video-guidance", "-1"], "video_guidance_scale")]
    for extra, message in cases:
        assert main([*missing, "--prompt", "x", *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "i2v", "--model-dir", str(tmp_path), "--prompt", "x", "--image", "none.png"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("extra, message", [
    (["--seconds", "nan"], "seconds=nan: give a length of 0 seconds or more"),
    (["--seconds", "-3"], "seconds=-3.0: give a length of 0 seconds or more"),
    (["--width", "99968", "--height", "64"], "width=99968 px is above the largest size accepted (8192 px)"),
    (["--width", "8192", "--height", "8192", "--frames", "8193"], "GiB free: at 8192x8192 at most"),
    (["--frames", "8193"], "GiB free: at 640x384 at most"),                  # the 384p folder's size
])
def test_cli_refuses_lengths_and_sizes_that_make_no_video(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr("pyramid_core.cli.free_host_memory", lambda: 2**29)   # any machine: 512 MiB free
    folder = tmp_path / "models"
    (folder / "diffusion_transformer_384p").mkdir(parents=True)       # nothing is loaded before the checks
    assert main(["generate", "t2v", "--model-dir", str(folder), "--prompt", "x", "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_says_what_is_wrong_with_the_model_folder_and_device(tmp_path, capsys):
    assert main(["generate", "t2v", "--model-dir", str(tmp_path / "nope"), "--prompt", "x", "--device", "cpu"]) == 2
    assert f"--model-dir {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert main(["generate", "t2v", "--model-dir", str(tmp_path), "--prompt", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "holds none of diffusion_transformer_384p/, diffusion_transformer_768p/" in err and "}/" not in err
    if not torch.cuda.is_available():
        assert main(["generate", "t2v", "--model-dir", str(tmp_path), "--prompt", "x", "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA GPU is usable here" in capsys.readouterr().err
    assert main(["generate", "t2v", "--model-dir", str(tmp_path), "--prompt", "x", "--device", "gpu0"]) == 2
    assert "--device gpu0: not a torch device" in capsys.readouterr().err


def test_module_entry_point(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["pyramid_core", "generate", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("pyramid_core", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "t2v" in out and "--history-frames" in out


def test_vae_tiles_are_auto_by_default_and_a_bad_size_says_what_to_give(tmp_path, capsys):
    from pyramid_core.cli import build_parser

    base = ["generate", "t2v", "--model-dir", str(tmp_path), "--prompt", "x"]
    assert build_parser().parse_args(base).vae_tile == "auto"
    assert build_parser().parse_args([*base, "--vae-tile", "0"]).vae_tile is None
    assert build_parser().parse_args([*base, "--vae-tile", "512"]).vae_tile == 512
    with pytest.raises(SystemExit):
        main([*base, "--vae-tile", "500"])
    assert "tile size 500: give auto, 0 (whole frames) or a positive multiple of 8 px" in capsys.readouterr().err


def test_cli_generates_with_fp8_weights(checkpoints, tmp_path):
    official, _ = checkpoints
    out = tmp_path / "fp8.mp4"
    options = [o if o != "fp32" else "bf16" for o in COMMON]
    assert main(["generate", "t2v", "--model-dir", str(official), "--frames", "9", "--output", str(out),
                 *options, "--weight-dtype", "fp8_e4m3fn"]) == 0
    assert read_video(out)[0].shape == (9, 64, 128, 3)


def test_cli_block_swap_makes_the_same_video(checkpoints, tmp_path, capsys):
    official, _ = checkpoints
    videos = []
    for swap in ("0", "2"):
        out = tmp_path / f"swap{swap}.mp4"
        assert main(["generate", "t2v", "--model-dir", str(official), "--frames", "9", "--output", str(out),
                     *COMMON, "--block-swap", swap]) == 0
        videos.append(read_video(out)[0])
    assert torch.equal(videos[0], videos[1])
    assert main(["generate", "t2v", "--model-dir", str(official), *COMMON, "--block-swap", "-1"]) == 2
    assert "--block-swap -1: the number of DiT blocks to keep in host memory" in capsys.readouterr().err


def test_cli_text_encoders_on_the_cpu_in_fp8(checkpoints, tmp_path):
    official, _ = checkpoints
    out = tmp_path / "t5cpu.mp4"
    assert main(["generate", "t2v", "--model-dir", str(official), "--frames", "9", "--output", str(out), *COMMON,
                 "--text-encoder-device", "cpu", "--text-encoder-weights", "fp8_e4m3fn"]) == 0
    assert read_video(out)[0].shape == (9, 64, 128, 3)
