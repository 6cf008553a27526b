"""What each variant needs, in each layout, and the unreachable-Hub message."""

from __future__ import annotations

import pytest

from support import free_port

from pyramid_core.hub import catalog
from pyramid_core.hub.cli import download_main
from pyramid_core.variants import VARIANTS, get_variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("layout", catalog.LAYOUTS)
def test_every_variant_has_a_dit_a_vae_and_its_text_encoders(variant, layout):
    files = catalog.files_for(variant, layout)
    kinds = [f.kind for f in files]
    assert kinds.count("dit") == 1 and kinds.count("vae") == 1 and "text_encoder" in kinds
    assert len({(f.directory, f.name) for f in files}) == len(files), "two files in one place"
    family = get_variant(variant).family
    dit = next(f for f in files if f.kind == "dit")
    if dit.is_folder:                                 # the release's folder of this very variant
        assert dit.repo == catalog.release_repo(variant) and dit.path == get_variant(variant).folder + "/"
    if layout == "official" or family == "mmdit":     # SD3: its own VAE and three text encoders
        folders = {f.path.rstrip("/") for f in files if f.kind == "text_encoder"}
        assert folders == set(catalog.TEXT_ENCODER_FOLDERS[family])
        assert all(f.is_folder and f.repo == catalog.release_repo(variant) for f in files)
    for f in files:
        assert f.url.startswith(f"https://huggingface.co/{f.repo}/")
        assert f.directory in catalog.COMFYUI_FOLDERS


def test_fp8_swaps_the_dit_and_t5_only():
    plain, fp8 = catalog.files_for("miniflux-384p"), catalog.files_for("miniflux-384p", fp8=True)
    changed = {(a.kind, a.name, b.name) for a, b in zip(plain, fp8) if a != b}
    assert changed == {("dit", "pyramid_flow_miniflux_bf16_v2.safetensors",
                        "pyramid_flow_miniflux_fp8_e4m3fn_v2.safetensors"),
                       ("text_encoder", "t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors")}
    with pytest.raises(ValueError, match="unknown layout"):
        catalog.files_for("miniflux-384p", "flat")


def test_an_unreachable_hub_is_reported_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert download_main(["miniflux-384p", "--comfyui", str(tmp_path)]) == 1
    assert "could not list the files on the Hub" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]
