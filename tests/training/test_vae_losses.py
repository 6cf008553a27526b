"""VAE losses: LPIPS form with pluggable features, PatchGANs, hinge and the adaptive GAN weight."""

from __future__ import annotations

import pytest
import torch

from pyramid_core.models.vae.posterior import DiagonalGaussian
from pyramid_core.training.vae_losses import (PatchDiscriminator2D, PatchDiscriminator3D, PerceptualLoss,
                                              TinyFeatures, VAELoss, VGG16Features, build_perceptual, hinge_d_loss)


def test_perceptual_is_zero_for_identical_images_and_grows_with_noise():
    torch.manual_seed(0)
    lpips = build_perceptual("tiny")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    near, far = lpips(x, x + 0.05 * torch.randn_like(x)), lpips(x, x + 0.5 * torch.randn_like(x))
    assert (far > near).all() and not any(p.requires_grad for p in lpips.parameters())


def test_lpips_weights_load_from_a_local_file_with_the_reference_names(tmp_path):
    torch.manual_seed(0)
    names = set(PerceptualLoss(VGG16Features()).state_dict())
    assert {"net.slice1.0.weight", "net.slice5.28.bias", "lin4.model.1.weight"} <= names
    tiny = PerceptualLoss(TinyFeatures())
    state = {k: torch.randn_like(v) for k, v in tiny.state_dict().items() if k not in ("shift", "scale")}
    torch.save(state, tmp_path / "lpips.pth")
    loaded = PerceptualLoss(TinyFeatures(), str(tmp_path / "lpips.pth"))
    assert torch.equal(loaded.lin0.model[1].weight, state["lin0.model.1.weight"])
    torch.save({"something": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an LPIPS checkpoint"):
        PerceptualLoss(TinyFeatures(), str(tmp_path / "wrong.pth"))


@pytest.mark.parametrize("cls, frames", [(PatchDiscriminator2D, 1), (PatchDiscriminator2D, 9),
                                         (PatchDiscriminator3D, 1), (PatchDiscriminator3D, 9)])
def test_discriminators_take_images_and_videos(cls, frames):
    disc = cls(3, channels=8, layers=3)
    logits = disc(torch.randn(2, 3, frames, 32, 32))
    assert logits.shape[1] == 1 and logits.ndim in (4, 5) and logits.numel() > 0


def test_hinge_loss():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1


def _setup(disc_start):
    torch.manual_seed(0)
    last = torch.nn.Conv2d(4, 3, 1)
    feats = torch.randn(2, 4, 16, 16)
    recon = last(feats).unsqueeze(2)                                # (B, 3, 1, H, W)
    posterior = DiagonalGaussian(torch.randn(2, 8, 1, 2, 2))
    loss = VAELoss(build_perceptual("tiny"), PatchDiscriminator2D(3, 8, 2), disc_start=disc_start)
    return loss, recon, torch.rand(2, 3, 1, 16, 16) * 2 - 1, posterior, last.weight


def test_gan_terms_are_off_before_disc_start_and_weighted_adaptively_after():
    loss_fn, recon, target, posterior, last = _setup(disc_start=5)
    total, logs = loss_fn.generator_loss(target, recon, posterior, step=4, last_layer=last)
    assert logs["g_loss"] == 0 and logs["d_weight"] == 0
    expected = logs["pixel"] + logs["perceptual"] + 1e-6 * logs["kl"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total, logs = loss_fn.generator_loss(target, recon, posterior, step=5, last_layer=last)
    nll = loss_fn.pixel_fn(recon, target) + loss_fn.perceptual(recon[:, :, 0], target[:, :, 0]).mean()
    g = -loss_fn.discriminator(recon).mean()
    ratio = torch.autograd.grad(nll, last, retain_graph=True)[0].norm() / (
        torch.autograd.grad(g, last, retain_graph=True)[0].norm() + 1e-4)
    assert logs["d_weight"] == pytest.approx(0.5 * ratio.item(), rel=1e-4)
    d_loss, d_logs = loss_fn.discriminator_loss(target, recon)
    assert d_loss.requires_grad and set(d_logs) == {"d_loss", "logits_real", "logits_fake"}


def test_the_gan_and_the_distances_compute_in_fp32_under_bf16_autocast():
    """The feature and VAE nets may run in bf16; the discriminator, the LPIPS distance, the KL
    and the adaptive weight never do (see VAELoss.discriminate and PerceptualLoss.forward)."""
    loss_fn, recon, target, _, last = _setup(disc_start=0)
    frames = target[:, :, 0]
    posterior = DiagonalGaussian(torch.randn(2, 8, 1, 2, 2).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss_fn.discriminate(recon).dtype == torch.float32
        assert loss_fn.perceptual(frames, frames + 0.1).dtype == torch.float32
        assert posterior.kl().dtype == torch.float32
        total, logs = loss_fn.generator_loss(target, recon, posterior, step=0, last_layer=last)
        d_loss, _ = loss_fn.discriminator_loss(target, recon)
    assert total.dtype == d_loss.dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()) and logs["d_weight"] > 0


class _MaskedFeatures(torch.nn.Module):
    """Features that are exactly 0 over every channel in the left half, with gradients still
    flowing there (no ReLU to stop them): the edge where sqrt(sum(f^2)) has an infinite slope."""

    channels = (3,)

    def forward(self, x):
        mask = torch.ones_like(x)
        mask[..., : x.shape[-1] // 2] = 0
        return [x * mask]


def test_perceptual_gradient_is_finite_where_a_feature_column_is_zero():
    lpips = PerceptualLoss(_MaskedFeatures())
    x = (torch.rand(1, 3, 8, 8) * 2 - 1).requires_grad_(True)
    lpips(x, torch.rand(1, 3, 8, 8) * 2 - 1).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[..., :4] == 0).all() and x.grad[..., 4:].abs().sum() > 0
