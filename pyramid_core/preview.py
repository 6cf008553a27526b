"""Cheap RGB previews of Pyramid Flow latents, and fitting their colours to a VAE.

A preview is a linear map of each latent pixel's 16 channels to RGB (plus a bias), applied to
the causal VAE's own latents: the samplers' latents are first de-normalised with the
variant's constants (the image constants for the video's first latent frame, the video
constants after it), so one map serves every model that shares the VAE. The first frame and
the later frames may have maps of their own: the causal VAE encodes frame 0 alone and every
later latent frame from 8 pixel frames.

The built-in map is the 16x3 matrix that the older ComfyUI wrapper published for this VAE
(kijai/ComfyUI-PyramidFlowWrapper, latent_preview.py, commit 3aeea32, "Add latent preview"),
used for both kinds of frames with no bias. ``python -m pyramid_core fit-preview`` fits a map
by least squares to any VAE checkpoint on the user's own images and clips, so a fine-tuned
VAE gets its own (:func:`fit_preview_factors`, saved with :meth:`PreviewFactors.save`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from .latents import denormalize_latents
from .variants import LATENT_CHANNELS, VAE_SPATIAL_FACTOR, VAE_TEMPORAL_FACTOR, Variant

__all__ = ["BUILTIN_FACTORS", "PreviewFactors", "fit_preview_factors", "latent_preview_rgb"]

FORMAT = "pyramid-flow-preview-factors/1"

# kijai/ComfyUI-PyramidFlowWrapper latent_preview.py (commit 3aeea32): one row per latent
# channel, columns R, G, B; applied there without a bias, the result mapped by (x + 1) / 2.
_WRAPPER_MATRIX = [
    [0.05389399697934166, 0.025018778505575393, -0.009193515248318657],
    [0.02318250640590553, -0.026987363837713156, 0.040172639061236956],
    [0.046035451343323666, -0.02039565868920197, 0.01275569344290342],
    [-0.015559161155025095, 0.051403973219861246, 0.03179031307996347],
    [-0.02766167769640129, 0.03749545161530447, 0.003335141009473408],
    [0.05824598730479011, 0.021744367381243884, -0.01578925627951616],
    [0.05260929401500947, 0.0560165014956886, -0.027477296572565126],
    [0.018513891242931686, 0.041961785217662514, 0.004490763489747966],
    [0.024063060899760215, 0.065082853069653, 0.044343437673514896],
    [0.05250992323006226, 0.04361117432588933, 0.01030076055524387],
    [0.0038921710021782366, -0.025299228133723792, 0.019370764014574535],
    [-0.00011950534333568519, 0.06549370069727675, -0.03436712163379723],
    [-0.026020578032683626, -0.013341758571090847, -0.009119046570271953],
    [0.024412451175602937, 0.030135064560817174, -0.008355486384198006],
    [0.04002209845752687, -0.017341304390739463, 0.02818338690302971],
    [-0.032575108695213684, -0.009588338926775117, -0.03077312160940468],
]


@dataclass(frozen=True)
class PreviewFactors:
    """Latent-to-RGB maps: ``rgb = latent @ matrix + bias``, RGB in [-1, 1].

    ``first``/``first_bias`` are for the video's first latent frame, ``later``/``later_bias``
    for the others; matrices are ``(16, 3)`` and biases ``(3,)``, float32.
    """

    first: torch.Tensor
    first_bias: torch.Tensor
    later: torch.Tensor
    later_bias: torch.Tensor
    source: str = ""

    def for_frame(self, first_frame: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.first, self.first_bias) if first_frame else (self.later, self.later_bias)

    def to_json(self) -> dict:
        def part(matrix, bias):
            return {"matrix": matrix.tolist(), "bias": bias.tolist()}

        return {"format": FORMAT, "source": self.source, "first_frame": part(self.first, self.first_bias),
                "later_frames": part(self.later, self.later_bias)}

    def save(self, path: str | Path) -> Path:
        """Write the factors as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PreviewFactors":
        """Factors from a JSON file written by :meth:`save`; ``ValueError`` saying what is wrong."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a preview factors file ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a preview factors file (format {FORMAT!r}); make one with "
                             "python -m pyramid_core fit-preview")

        def part(name):
            matrix = torch.tensor(data[name]["matrix"], dtype=torch.float32)
            bias = torch.tensor(data[name]["bias"], dtype=torch.float32)
            if matrix.shape != (LATENT_CHANNELS, 3) or bias.shape != (3,):
                raise ValueError(f"{path}: {name} must be a {LATENT_CHANNELS}x3 matrix and 3 biases")
            return matrix, bias

        return cls(*part("first_frame"), *part("later_frames"), source=str(data.get("source", "")))


BUILTIN_FACTORS = PreviewFactors(
    torch.tensor(_WRAPPER_MATRIX), torch.zeros(3), torch.tensor(_WRAPPER_MATRIX), torch.zeros(3),
    source="kijai/ComfyUI-PyramidFlowWrapper latent_preview.py (commit 3aeea32)",
)


def latent_preview_rgb(frame: torch.Tensor, variant: Variant, first_frame: bool,
                       factors: PreviewFactors = BUILTIN_FACTORS) -> torch.Tensor:
    """An RGB picture of one latent frame of a sampler.

    Args:
        frame: ``(16, h, w)`` normalised (DiT) latent of one frame, as the samplers hold it.
        variant: its normalisation constants.
        first_frame: whether it is the video's first latent frame (image constants).
        factors: the latent-to-RGB map.

    Returns:
        ``(h, w, 3)`` float32 in [0, 1].
    """
    frame = frame.detach().to("cpu", torch.float32)[None, :, None]                   # (1, 16, 1, h, w)
    raw = denormalize_latents(frame, variant, first_frame=0 if first_frame else 1)[0, :, 0]   # (16, h, w)
    matrix, bias = factors.for_frame(first_frame)
    rgb = torch.einsum("chw,cr->hwr", raw, matrix) + bias                           # (h, w, 3)
    return ((rgb + 1) / 2).clamp(0, 1)


# --------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------

def _targets(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels ``(3, F, H, W)`` -> the RGB each latent pixel stands for, ``(T, H/8, W/8, 3)``.

    Latent frame 0 is pixel frame 0; latent frame k >= 1 is the mean of pixel frames
    ``1 + 8(k-1) .. 8k``; spatially each latent pixel is the mean of its 8x8 block.
    """
    first = pixels[:, :1]
    later = pixels[:, 1:]
    frames = [first]
    if later.shape[1]:
        frames.append(later.reshape(3, -1, VAE_TEMPORAL_FACTOR, *later.shape[-2:]).mean(dim=2))
    merged = torch.cat(frames, dim=1)                                                # (3, T, H, W)
    pooled = F.avg_pool2d(merged.transpose(0, 1), VAE_SPATIAL_FACTOR)                # (T, 3, h, w)
    return pooled.permute(0, 2, 3, 1)


def _least_squares(latents: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(16, 3)`` matrix and ``(3,)`` bias minimising ``|latents @ m + b - rgb|^2`` (float64 normal equations)."""
    x = torch.cat([latents.double(), torch.ones(latents.shape[0], 1, dtype=torch.float64)], dim=1)
    gram = x.T @ x
    # a touch of ridge, relative to the data's scale, so that a singular set still solves
    gram += 1e-9 * gram.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.float64)
    solution = torch.linalg.solve(gram, x.T @ rgb.double())                         # (17, 3)
    return solution[:-1].float(), solution[-1].float()


def fit_preview_factors(vae, clips: Iterable[torch.Tensor], source: str = "") -> PreviewFactors:
    """Fit latent-to-RGB maps of ``vae`` on pixel clips.

    Args:
        vae: a :class:`pyramid_core.models.vae.CausalVideoVAE`.
        clips: ``(3, 1 + 8k, H, W)`` pixels in [-1, 1] (an image is one frame), H and W
            multiples of 8. Images give first-frame samples; clips of 9 or more frames also
            give later-frame samples.
        source: what the factors were fitted on, kept in the file.

    Returns:
        :class:`PreviewFactors`; later frames fall back to the first-frame map when no clip
        had later frames.
    """
    first_x, first_y, later_x, later_y = [], [], [], []
    with torch.no_grad():
        for clip in clips:
            latents = vae.encode(clip[None].to(vae.device, vae.dtype)).mode()[0].float().cpu()   # (16, T, h, w)
            rgb = _targets(clip.float().cpu())                                               # (T, h, w, 3)
            values = latents.permute(1, 2, 3, 0)                                             # (T, h, w, 16)
            first_x.append(values[0].reshape(-1, LATENT_CHANNELS))
            first_y.append(rgb[0].reshape(-1, 3))
            if values.shape[0] > 1:
                later_x.append(values[1:].reshape(-1, LATENT_CHANNELS))
                later_y.append(rgb[1:].reshape(-1, 3))
    if not first_x:
        raise ValueError("fit-preview needs at least one image or clip")
    first = _least_squares(torch.cat(first_x), torch.cat(first_y))
    later = _least_squares(torch.cat(later_x), torch.cat(later_y)) if later_x else first
    return PreviewFactors(*first, *later, source=source)
