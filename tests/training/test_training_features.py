"""Feature extraction: normalised VAE latents and text features to files, resumable, sharded over ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pyramid_core.models.vae import CausalVideoVAE
from pyramid_core.training.data import LatentDataset, read_jsonl
from pyramid_core.training.distributed import DistInfo
from pyramid_core.training.features import extract_latents, extract_text_features, video_frames_for_latents
from pyramid_core.training.synthetic import make_moving_shapes

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    anno = make_moving_shapes(root, num_videos=3, num_images=1, width=24, height=16, num_frames=12, fps=8)
    rows = read_jsonl(anno) + [{"video": "missing.mp4", "text": 5}]
    anno.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, anno


def _vae():
    config = json.loads((REPO / "tests" / "data" / "golden" / "config_vae_tiny.json").read_text())
    torch.manual_seed(0)
    return CausalVideoVAE(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()


def test_latents_are_raw_sharded_and_resumable(shapes, tmp_path):
    root, anno = shapes
    vae, out = _vae(), tmp_path / "lat"
    args = (vae, anno, out, tmp_path / "lat.jsonl", [(24, 16)], 9, 8.0, root)
    rank1 = extract_latents(*args, info=DistInfo(rank=1, world_size=2))
    assert rank1["encoded"] == 2 and rank1["skipped"] == 0          # rows 1 and 3 (the image)
    stats = extract_latents(*args)                                  # one process: resumes, does the rest
    assert stats["existing"] == 2 and stats["encoded"] == 2 and stats["skipped"] == 1 and stats["rows_out"] == 4
    rows = read_jsonl(tmp_path / "lat.jsonl")
    video, image = torch.load(rows[0]["latent"]), torch.load(rows[3]["latent"])
    assert video.shape == (1, 16, 2, 2, 3) and image.shape == (1, 16, 1, 2, 3)
    pixels = video_frames_for_latents(root / rows[0]["video"], 9, 8.0, [(24, 16)], False)
    expected = vae.encode(pixels[None]).sample(torch.Generator().manual_seed(0))
    assert torch.allclose(video, expected, atol=1e-5)  # raw VAE latents, as the reference stores them
    assert extract_latents(*args)["existing"] == 4                 # nothing left to do


def test_text_features_match_the_encoder_and_feed_the_latent_dataset(shapes, tmp_path):
    from test_text_encoders import _clip_pair, _t5_pair  # tiny CLIP/T5 built in memory
    from pyramid_core.models.text_encoders import PyramidTextEncoder

    root, anno = shapes
    torch.manual_seed(0)
    (clip_tok, clip), (t5_tok, t5) = _clip_pair(16, None), _t5_pair()
    encoder = PyramidTextEncoder([clip_tok], [clip], t5_tok, t5)
    lat_jsonl = tmp_path / "lat.jsonl"
    extract_latents(_vae(), anno, tmp_path / "lat", lat_jsonl, [(24, 16)], 9, 8.0, root)
    stats = extract_text_features(encoder.encode_prompt, lat_jsonl, tmp_path / "txt", tmp_path / "both.jsonl",
                                  batch_size=3)
    assert stats["encoded"] == 4 and stats["rows_out"] == 4
    rows = read_jsonl(tmp_path / "both.jsonl")
    saved = torch.load(rows[1]["text_fea"])
    embeds, mask, pooled = encoder.encode_prompt(rows[1]["text"])
    assert torch.equal(saved["prompt_attention_mask"], mask) and torch.allclose(saved["prompt_embed"], embeds.float())
    assert torch.allclose(saved["pooled_prompt_embed"], pooled.float())
    dataset = LatentDataset([tmp_path / "both.jsonl"], max_frames=2)
    assert len(dataset) == 4 and dataset[(0, 0)]["prompt_embed"].shape == (128, embeds.shape[-1])


def test_a_relative_out_dir_is_relative_to_the_working_directory(shapes, tmp_path, monkeypatch):
    """``--out-dir features`` writes ``./features``, not ``<data_root>/features`` (where the media are)."""
    root, anno = shapes
    monkeypatch.chdir(tmp_path)
    stats = extract_latents(_vae(), anno, Path("feats"), Path("lat.jsonl"), [(24, 16)], 9, 8.0, root)
    assert stats["rows_out"] == 4
    rows = read_jsonl(tmp_path / "lat.jsonl")
    assert all((tmp_path / row["latent"]).is_file() for row in rows)
    assert not (root / "feats").exists()
