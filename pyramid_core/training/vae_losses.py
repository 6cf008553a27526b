"""VAE training losses: pixel + perceptual (LPIPS form) + KL, and a PatchGAN with adaptive weight.

The recipe follows the reference (MAGVIT-v2 / taming style): the generator minimises
``w_pix * pixel + w_p * perceptual + w_kl * KL + d_weight * g_loss``, where ``d_weight`` is
``disc_weight * |grad nll| / |grad g_loss|`` at the decoder's last layer, so the GAN term
never dominates the reconstruction; the discriminator learns with a hinge loss. Both GAN
terms are off before ``disc_start``.

The perceptual loss is LPIPS's formula around any feature network. ``VGG16Features`` with
the heads of a local ``vgg_lpips.pth`` is the real LPIPS (its parameter names match that
file); ``TinyFeatures`` is a small random conv stack for tests (nothing is downloaded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------
# perceptual
# --------------------------------------------------------------------------------------

# torchvision's vgg16().features up to relu5_3, as (out_channels or "M" for max-pool)
_VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG16_SLICE_ENDS = (4, 9, 16, 23, 30)   # features[:4] -> relu1_2, ... features[23:30] -> relu5_3


def _vgg_features() -> list[nn.Module]:
    layers, channels = [], 3
    for spec in _VGG16_LAYERS:
        if spec == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, spec, 3, padding=1), nn.ReLU(inplace=False)]
            channels = spec
    return layers


class VGG16Features(nn.Module):
    """VGG16 relu1_2..relu5_3 with module names ``slice{1..5}.{index}`` as in LPIPS checkpoints."""

    channels = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers, start = _vgg_features(), 0
        for k, end in enumerate(_VGG16_SLICE_ENDS, 1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), layers[index])
            setattr(self, f"slice{k}", block)
            start = end

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)
        return outs


class TinyFeatures(nn.Module):
    """Three random conv stages (8, 16, 32 channels): a cheap stand-in feature net for tests."""

    channels = (8, 16, 32)

    def __init__(self) -> None:
        super().__init__()
        widths = (3, *self.channels)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU())
            for i in range(len(self.channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class _LinHead(nn.Module):
    """LPIPS's per-layer 1x1 conv to one channel (``lin{k}.model.1.weight`` in checkpoints)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))
        nn.init.constant_(self.model[1].weight, 1.0 / channels)  # untrained: mean over channels


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features divided by their norm over C, in fp32.

    ``vector_norm``'s gradient is 0 where the norm is 0 (an all-zero feature column), where
    ``sqrt(sum(f^2))`` gives inf * 0 = NaN; a ReLU in front masks that NaN again, a feature
    net that ends without one (or whose tiny values underflow) does not.
    """
    features = features.float()
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + 1e-10)


class PerceptualLoss(nn.Module):
    """LPIPS distance per image: sum over layers of the spatial mean of lin(|f(x)/|f(x)| - f(y)/|f(y)||^2).

    Args:
        net: module mapping (N, 3, H, W) to a list of feature maps, with a ``channels`` tuple.
        weights: optional path of a local LPIPS checkpoint (``net.*`` and ``lin*.*`` tensors).
    Inputs are in [-1, 1]; the result is (N,). Frozen: it never trains.
    """

    def __init__(self, net: nn.Module, weights: str | None = None) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = net
        for k, channels in enumerate(net.channels):
            setattr(self, f"lin{k}", _LinHead(channels))
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, unexpected = self.load_state_dict(state, strict=False)
            missing = [m for m in missing if m not in ("shift", "scale")]
            if missing or unexpected:
                raise ValueError(f"{weights} is not an LPIPS checkpoint for this net: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # dropout stays off: the loss is a fixed metric

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The feature net runs in the caller's precision (under bf16 autocast: bf16, where the
        # cost is); the distance does not. In bf16 two unit feature vectors agree to ~3 digits,
        # so |a - b|^2 of a good reconstruction is rounding noise; and the norm's gradient
        # must stay finite where a feature column is 0 (see _unit_channels).
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = 0.0
        with torch.autocast(x.device.type, enabled=False):
            for k, (a, b) in enumerate(zip(fx, fy)):
                a, b = _unit_channels(a), _unit_channels(b)
                total = total + getattr(self, f"lin{k}").model((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total                                                                 # (N,), fp32


def build_perceptual(kind: str, weights: str = "") -> PerceptualLoss:
    """``"vgg16"`` (real LPIPS, with ``weights``) or ``"tiny"`` (random, for tests)."""
    net = VGG16Features() if kind == "vgg16" else TinyFeatures()
    return PerceptualLoss(net, weights or None)


# --------------------------------------------------------------------------------------
# discriminators
# --------------------------------------------------------------------------------------

def _patch_gan(conv, norm, in_channels: int, channels: int, layers: int, down, keep) -> nn.Sequential:
    """PatchGAN: strided conv stages with instance norm and LeakyReLU, then a 1-channel map."""
    seq: list[nn.Module] = [conv(in_channels, channels, **down), nn.LeakyReLU(0.2)]
    width = channels
    for n in range(1, layers + 1):
        nxt = channels * min(2 ** n, 8)
        seq += [conv(width, nxt, bias=False, **(down if n < layers else keep)), norm(nxt), nn.LeakyReLU(0.2)]
        width = nxt
    seq.append(conv(width, 1, **keep))
    for m in seq:  # the pix2pix initialisation
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return nn.Sequential(*seq)


class PatchDiscriminator2D(nn.Module):
    """Per-frame PatchGAN: (B, 3, T, H, W) -> logits (B*T, 1, h, w)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.main = _patch_gan(nn.Conv2d, lambda c: nn.InstanceNorm2d(c, affine=True), in_channels, channels, layers,
                               dict(kernel_size=4, stride=2, padding=1), dict(kernel_size=4, stride=1, padding=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        return self.main(video.transpose(1, 2).reshape(b * t, c, h, w))


class PatchDiscriminator3D(nn.Module):
    """Spatio-temporal PatchGAN: (B, 3, T, H, W) -> logits (B, 1, T, h, w).

    Time keeps its length (kernel 3, padding 1), so images (T = 1) and videos share it.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.main = _patch_gan(nn.Conv3d, lambda c: nn.InstanceNorm3d(c, affine=True), in_channels, channels, layers,
                               dict(kernel_size=(3, 4, 4), stride=(1, 2, 2), padding=1),
                               dict(kernel_size=(3, 4, 4), stride=1, padding=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.main(video)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


# --------------------------------------------------------------------------------------
# the combined loss
# --------------------------------------------------------------------------------------

class VAELoss(nn.Module):
    """Generator and discriminator objectives of the causal VAE.

    Args:
        perceptual: a :class:`PerceptualLoss`, or None to skip the term.
        discriminator: a PatchGAN, or None for no GAN.
        pixel_loss: ``"l1"`` or ``"mse"`` (the reference used MSE with weight 10).
        disc_start: step from which the GAN terms count.
    """

    def __init__(self, perceptual: PerceptualLoss | None, discriminator: nn.Module | None,
                 pixel_loss: str = "l1", pixel_weight: float = 1.0, perceptual_weight: float = 1.0,
                 kl_weight: float = 1e-6, disc_weight: float = 0.5, disc_start: int = 0) -> None:
        super().__init__()
        self.perceptual = perceptual
        self.discriminator = discriminator
        self.pixel_fn = F.l1_loss if pixel_loss == "l1" else F.mse_loss
        self.pixel_weight, self.perceptual_weight, self.kl_weight = pixel_weight, perceptual_weight, kl_weight
        self.disc_weight, self.disc_start = disc_weight, disc_start

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        """disc_weight * |d nll / d W| / |d g / d W| at the decoder's last weight, clamped to [0, 1e4].

        Norms and quotient in fp32 whatever the weight's dtype: a bf16 sum of squares keeps
        ~3 digits, and a gradient norm that rounds to 0 sends the weight to its clamp.
        """
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        nll_norm = torch.linalg.vector_norm(nll_grad, dtype=torch.float32)
        g_norm = torch.linalg.vector_norm(g_grad, dtype=torch.float32)
        weight = nll_norm / (g_norm + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.disc_weight

    def discriminate(self, video: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits on (B, 3, T, H, W) pixels, computed in fp32 under any autocast.

        The discriminator is small next to the VAE, and its path is where bf16 fails first:
        instance norms over a few positions, hinge margins of the logits, and the backward
        pass into the reconstruction that carries the whole GAN gradient into the decoder
        (bf16 strided 3-D convolutions are where CPU kernels on AMX have computed wrong
        results, pytorch#169688). In fp32 none of this depends on the machine's bf16 path.
        """
        with torch.autocast(video.device.type, enabled=False):
            return self.discriminator(video.float())

    def generator_loss(self, inputs: torch.Tensor, recon: torch.Tensor, posterior, step: int,
                       last_layer: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Total generator loss and its parts; inputs/recon (B, 3, T, H, W), posterior with ``kl()``."""
        recon = recon.float()
        frames_in = inputs.transpose(1, 2).flatten(0, 1)                              # (B*T, 3, H, W)
        frames_out = recon.transpose(1, 2).flatten(0, 1)
        pixel = self.pixel_fn(frames_out, frames_in)
        perceptual = (self.perceptual(frames_out, frames_in).mean() if self.perceptual is not None
                      and self.perceptual_weight > 0 else torch.zeros((), device=inputs.device))
        nll = self.pixel_weight * pixel + self.perceptual_weight * perceptual
        kl = posterior.kl().mean()                                                      # fp32
        loss = nll + self.kl_weight * kl
        g_loss = d_weight = torch.zeros((), device=inputs.device)
        if self.gan_active(step):
            g_loss = -self.discriminate(recon).mean()
            d_weight = self.adaptive_weight(nll, g_loss, last_layer) if last_layer is not None else \
                torch.tensor(self.disc_weight, device=inputs.device)
            loss = loss + d_weight * g_loss
        logs = {"loss": loss, "pixel": pixel, "perceptual": perceptual, "kl": kl, "g_loss": g_loss,
                "d_weight": d_weight}
        return loss, {k: float(v.detach()) for k, v in logs.items()}

    def discriminator_loss(self, inputs: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss on real inputs vs detached reconstructions."""
        logits_real = self.discriminate(inputs.detach())
        logits_fake = self.discriminate(recon.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        return loss, {"d_loss": float(loss.detach()), "logits_real": float(logits_real.detach().mean()),
                      "logits_fake": float(logits_fake.detach().mean())}


def build_vae_loss(cfg) -> VAELoss:
    """The loss of a :class:`~.config.VAETrainConfig`."""
    perceptual = build_perceptual(cfg.perceptual_net, cfg.lpips_weights) if cfg.perceptual_weight > 0 else None
    disc_cls = PatchDiscriminator3D if cfg.disc_type == "3d" else PatchDiscriminator2D
    discriminator = disc_cls(3, cfg.disc_channels, cfg.disc_layers) if cfg.disc_weight > 0 else None
    return VAELoss(perceptual, discriminator, cfg.pixel_loss, cfg.pixel_weight, cfg.perceptual_weight,
                   cfg.kl_weight, cfg.disc_weight, cfg.disc_start)
