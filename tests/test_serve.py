"""``serve`` picks the stand-ins when no Pyramid Flow DiT is in the ComfyUI's models folder."""

from __future__ import annotations

from serve import has_pyramid_dit


def test_a_pyramid_dit_is_recognised_by_file_name_or_official_folder(tmp_path):
    models = tmp_path / "models"
    assert not has_pyramid_dit(models)
    (models / "diffusion_models").mkdir(parents=True)
    (models / "diffusion_models" / "flux1-dev.safetensors").write_bytes(b"")
    assert not has_pyramid_dit(models)
    (models / "diffusion_models" / "pyramid_flow_miniflux_768p.safetensors").write_bytes(b"")
    assert has_pyramid_dit(models)

    other = tmp_path / "other"
    folder = other / "diffusion_models" / "pyramid-flow-sd3" / "diffusion_transformer_768p"
    folder.mkdir(parents=True)
    assert not has_pyramid_dit(other)                 # a folder without its config is no model
    (folder / "config.json").write_text("{}")
    assert has_pyramid_dit(other)
