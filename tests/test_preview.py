"""Latent previews in the Pyramid Flow VAE's colours, and fitting them to a VAE (fit-preview)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pyramid_core.cli import main
from pyramid_core.latents import normalize_latents
from pyramid_core.preview import BUILTIN_FACTORS, PreviewFactors, fit_preview_factors, latent_preview_rgb
from pyramid_core.training.synthetic import make_moving_shapes
from pyramid_core.variants import VARIANTS
from pyramid_core.video_io import frames_to_pixels, read_video

GOLDEN = Path(__file__).parent / "data" / "golden"


def test_the_preview_maps_the_vaes_own_latents():
    """Samplers hold normalised latents; the map applies to the VAE's raw ones, with the image
    constants for the first frame and the video constants after it."""
    raw = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    for name in ("miniflux-384p", "sd3-768p"):
        normalised = normalize_latents(raw, name)
        for frame, first in ((0, True), (1, False)):
            expected = ((torch.einsum("chw,cr->hwr", raw[0, :, frame], BUILTIN_FACTORS.first) + 1) / 2).clamp(0, 1)
            got = latent_preview_rgb(normalised[0, :, frame], VARIANTS[name], first)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_factors_round_trip_and_bad_files_say_so(tmp_path):
    factors = PreviewFactors(torch.randn(16, 3), torch.randn(3), torch.randn(16, 3), torch.randn(3), source="test")
    loaded = PreviewFactors.load(factors.save(tmp_path / "f.json"))
    assert all(torch.equal(a, b) for a, b in zip(
        (loaded.first, loaded.first_bias, loaded.later, loaded.later_bias),
        (factors.first, factors.first_bias, factors.later, factors.later_bias))) and loaded.source == "test"
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a preview factors file"):
        PreviewFactors.load(tmp_path / "bad.json")
    data = factors.to_json()
    data["first_frame"]["matrix"] = data["first_frame"]["matrix"][:4]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="16x3 matrix"):
        PreviewFactors.load(tmp_path / "short.json")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview_shapes")
    make_moving_shapes(root, num_videos=4, num_images=4, width=32, height=32, num_frames=9, fps=8)
    return root


class LinearVAE:
    """A VAE whose latents are known linear maps of the colours they stand for (plus noise):
    ``latent = rgb @ A + c``, with other maps for the first frame and the later ones."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.maps = [(torch.randn(3, 16, generator=g), torch.randn(16, generator=g)) for _ in range(2)]
        self.noise = torch.Generator().manual_seed(seed + 1)

    def encode(self, pixels):
        from pyramid_core.preview import _targets

        rgb = _targets(pixels[0])                                                    # (T, h, w, 3)
        frames = [rgb[t] @ self.maps[t > 0][0] + self.maps[t > 0][1] for t in range(rgb.shape[0])]
        latents = torch.stack(frames).permute(3, 0, 1, 2)                            # (16, T, h, w)
        latents = latents + 0.01 * torch.randn(latents.shape, generator=self.noise)
        return type("Posterior", (), {"mode": lambda _: latents[None]})()


def _explained(vae, factors: PreviewFactors, clips) -> float:
    """Share of the colours' energy (sum of squares) of the 8x8 blocks that the preview reproduces."""
    from pyramid_core.preview import _targets

    errors, totals = 0.0, 0.0
    for clip in clips:
        latents = vae.encode(clip[None]).mode()[0]                                   # (16, T, h, w)
        target = _targets(clip)                                                      # (T, h, w, 3)
        for t in range(latents.shape[1]):
            matrix, bias = factors.for_frame(t == 0)
            rgb = torch.einsum("chw,cr->hwr", latents[:, t], matrix) + bias
            errors += float(((rgb - target[t]) ** 2).sum())
            totals += float(((target[t] - 0) ** 2).sum())
    return 1 - errors / totals


def test_fitting_recovers_the_colours_of_the_latents(shapes):
    """Least squares finds the map back from the latents to the colours, one per kind of
    frame; another VAE's map (the built-in one) does not."""
    clips = [frames_to_pixels(read_video(p)[0][:9])[0] for p in sorted(shapes.rglob("*.mp4"))]
    clips += [frames_to_pixels(read_video(p)[0][:1])[0] for p in sorted(shapes.rglob("*.png"))]
    vae = LinearVAE()
    fitted = fit_preview_factors(vae, clips, source="moving shapes")
    assert not torch.equal(fitted.first, fitted.later)                              # both kinds fitted
    good, other = _explained(vae, fitted, clips), _explained(vae, BUILTIN_FACTORS, clips)
    print(f"colour energy explained: fitted {good:.4f}, built-in {other:.4f}")
    assert good > 0.99 and other < 0.5


def test_the_fit_preview_command_writes_factors_that_load(shapes, tmp_path, capsys):
    out = tmp_path / "preview.json"
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text((GOLDEN / "config_vae_tiny.json").read_text())
    (vae / "diffusion_pytorch_model.safetensors").write_bytes((GOLDEN / "weights_vae_tiny.safetensors").read_bytes())
    assert main(["fit-preview", "--vae", str(vae), "--inputs", str(shapes), "--out", str(out), "--size", "32",
                 "--frames", "9", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    factors = PreviewFactors.load(out)
    assert factors.first.shape == (16, 3) and "8 files" in factors.source
    assert main(["fit-preview", "--vae", str(vae), "--inputs", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
