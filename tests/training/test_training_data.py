"""Annotations, decoding, buckets and batches: bad rows are skipped and counted, never fatal."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pyramid_core.training.data import (BucketBatchSampler, LatentDataset, PixelDataset, frame_indices, make_loader,
                                        nearest_bucket, resize_center_crop)
from pyramid_core.training.synthetic import make_moving_shapes, random_scene, render


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    anno = make_moving_shapes(root, num_videos=4, num_images=3, width=48, height=32, num_frames=20, fps=24,
                              image_sizes=[(32, 48), (48, 32)])
    return root, anno


def test_synthetic_frames_are_deterministic_and_move():
    def clip(seed):
        background, objects = random_scene(np.random.default_rng(seed), 32, 24)
        return render(background, objects, 32, 24, 5)

    a, b = clip(3), clip(3)
    assert a.shape == (5, 24, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, clip(4))
    assert not np.array_equal(a[0], a[-1])  # shapes move


def test_videos_and_images_land_in_aspect_ratio_buckets(shapes):
    root, anno = shapes
    buckets = [(32, 32), (32, 48), (48, 32)]
    ds = PixelDataset([anno], buckets, num_frames=9, fps=12, data_root=root)
    assert sorted(set(ds.bucket_keys)) == [(1, 32, 48), (1, 48, 32), (9, 32, 48)]
    sample = ds[(0, 123)]
    assert sample["pixels"].shape == (3, 9, 32, 48) and sample["skipped"] == 0
    assert -1 <= sample["pixels"].min() and sample["pixels"].max() <= 1
    assert torch.equal(ds[(0, 123)]["pixels"], sample["pixels"])  # same seed, same frames
    assert isinstance(sample["text"], str) and "moving" in sample["text"]
    assert nearest_bucket(1920, 1080, [(640, 384), (384, 640), (512, 512)]) == (640, 384)


def test_frame_sampling_is_1_plus_8k_at_the_target_fps():
    rng = random.Random(0)
    idx = frame_indices(100, 24.0, 12.0, 17, rng)
    assert len(idx) == 17 and all(b - a == 2 for a, b in zip(idx, idx[1:]))
    slow = frame_indices(100, 8.0, 24.0, 9, rng)
    assert all(b - a == 1 for a, b in zip(slow, slow[1:]))  # a slow source is read frame by frame, never duplicated
    assert frame_indices(10, 24.0, 12.0, 9, rng) is None  # too short


def test_resize_covers_then_center_crops():
    frames = torch.zeros(2, 20, 40, 3, dtype=torch.uint8)
    frames[:, :, 10:30] = 255  # a bright vertical band in the middle
    out = resize_center_crop(frames, 16, 16)
    assert out.shape == (3, 2, 16, 16)
    assert out[:, :, :, 8].min() > 0.9 and out.mean() > 0.5  # the centre survived the crop


def test_bad_rows_are_skipped_with_a_warning_and_counted(shapes, tmp_path, caplog):
    root, anno = shapes
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    rows = [json.loads(line) for line in anno.read_text().splitlines()]
    rows += [
        {"video": "missing.mp4", "text": "gone"},
        {"video": str(tmp_path / "broken.mp4"), "text": "corrupt"},
        {"video": rows[0]["video"], "text": 42},
        {"text": "no media"},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    ds = PixelDataset([bad], [(48, 32), (32, 48)], num_frames=9, fps=12, data_root=root)
    assert len(ds) == 7
    assert sum(ds.skipped.values()) == 5 and ds.skipped["bad_json"] == 1 and ds.skipped["no_media"] == 1
    assert "missing.mp4" in caplog.text and "caption must be a string" in caplog.text


def test_a_file_that_breaks_after_the_scan_is_replaced_in_its_bucket(tmp_path):
    anno = make_moving_shapes(tmp_path, num_videos=3, width=16, height=16, num_frames=9, fps=8, seed=1)
    ds = PixelDataset([anno], [(16, 16)], num_frames=9, fps=8, data_root=tmp_path)
    (tmp_path / "videos" / "00000.mp4").write_bytes(b"")
    sample = ds[(0, 7)]
    assert sample["skipped"] == 1 and sample["index"] == 1 and ds.skipped["load"] == 1


def test_latent_rows_of_the_wrong_shape_are_skipped(tmp_path):
    rows = []
    for i, shape in enumerate([(1, 16, 3, 4, 6), (16, 2, 4, 6), (1, 8, 3, 4, 6), (1, 16, 3, 4)]):
        torch.save(torch.randn(shape), tmp_path / f"l{i}.pt")
        torch.save({"prompt_embed": torch.randn(1, 5, 8), "prompt_attention_mask": torch.ones(1, 5, dtype=torch.long),
                    "pooled_prompt_embed": torch.randn(1, 4)}, tmp_path / f"t{i}.pt")
        rows.append({"video": "x.mp4", "text": "t", "latent": f"l{i}.pt", "text_fea": f"t{i}.pt"})
    rows.append({"video": "x.mp4", "text": "t", "latent": "nope.pt", "text_fea": "t0.pt"})
    anno = tmp_path / "lat.jsonl"
    anno.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = LatentDataset([anno], max_frames=2, data_root=tmp_path)
    assert len(ds) == 2 and sum(ds.skipped.values()) == 3
    assert ds.bucket_keys == [(2, 4, 6), (2, 4, 6)]
    batch = next(make_loader(ds, batch_size=2, seed=0))
    assert batch["latent"].shape == (2, 16, 2, 4, 6)
    assert batch["prompt_embed"].shape == (2, 5, 8) and batch["pooled_prompt_embed"].shape == (2, 4)


def test_batches_are_seeded_split_over_ranks_and_resumable():
    keys = [(9, 16, 16)] * 7 + [(1, 16, 16)] * 5
    first = BucketBatchSampler(keys, batch_size=4, seed=3)
    batches = [b for b, _ in zip(first, range(10))]
    assert all(len({keys[i] for i, _ in b}) == 1 for b in batches)  # one bucket per batch
    assert batches == [b for b, _ in zip(BucketBatchSampler(keys, 4, seed=3), range(10))]
    assert batches[4:] == [b for b, _ in zip(BucketBatchSampler(keys, 4, seed=3, start_batch=4), range(6))]
    ranks = [[b for b, _ in zip(BucketBatchSampler(keys, 4, 3, rank=r, world_size=2), range(10))] for r in (0, 1)]
    assert all(sorted(a + b) == sorted(g) for a, b, g in zip(*ranks, batches))
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([(1, 8, 8)] * 3, batch_size=4)
