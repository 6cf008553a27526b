"""Training configs fail at start, naming the key, for typos, wrong types and impossible sizes."""

from __future__ import annotations

import json

import pytest

from pyramid_core.training.cli import train_vae_main
from pyramid_core.training.config import ConfigError, TrainConfig, VAETrainConfig, load_config, parse_overrides

BASE = {"vae_config": "vae.json", "width": 64, "height": 32}


def test_loads_json_yaml_and_toml_with_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({**BASE, "lr": 3e-4}))
    (tmp_path / "c.yaml").write_text("vae_config: vae.json\nwidth: 64\nheight: 32\nlr: 3.0e-4\nbuckets: [[64, 32]]\n")
    (tmp_path / "c.toml").write_text('vae_config = "vae.json"\nwidth = 64\nheight = 32\nlr = 3e-4\n')
    for name in ("c.json", "c.yaml", "c.toml"):
        cfg = load_config(VAETrainConfig, tmp_path / name, parse_overrides(["max_steps=7", "output_dir=runs/x"]))
        assert (cfg.width, cfg.height, cfg.lr, cfg.max_steps, cfg.output_dir) == (64, 32, 3e-4, 7, "runs/x")
    assert load_config(VAETrainConfig, tmp_path / "c.yaml").frame_buckets() == [(64, 32)]


@pytest.mark.parametrize("data, key", [
    ({"learning_rate": 1e-4}, "learning_rate"),         # unknown key
    ({"widht": 64}, "widht"),                           # typo
    ({"width": 60}, "width"),                           # not a multiple of 8
    ({"height": 0}, "height"),
    ({"num_frames": 16}, "num_frames"),                 # not 1 + 8k
    ({"batch_size": 0}, "batch_size"),
    ({"buckets": [[64, 30]]}, "buckets"),
    ({"lr": "fast"}, "lr"),                             # wrong type
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"disc_type": "4d"}, "disc_type"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"disc_layers": 4}, "disc_layers"),                # 32-pixel frames cannot take 4 PatchGAN stages
])
def test_bad_values_fail_naming_the_key(tmp_path, data, key):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**BASE, **data}))
    with pytest.raises(ConfigError, match=key):
        load_config(VAETrainConfig, path)


def test_typo_suggests_the_known_key():
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        load_config(VAETrainConfig, None, {**BASE, "widht": 64})


def test_vae_config_is_required_but_the_shared_base_needs_none():
    with pytest.raises(ConfigError, match="vae_config"):
        load_config(VAETrainConfig, None, {})
    assert load_config(TrainConfig, None, {}).batch_size == 4


def test_cli_rejects_a_bad_config_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**BASE, "num_frame": 17}))
    with pytest.raises(SystemExit):
        train_vae_main(["--config", str(path)])
    assert "num_frame" in capsys.readouterr().err
