"""``python -m pyramid_core download`` and ``pack-folder`` against a loopback Hub (tests/fake_hub.py).

The fake Hub serves the tiny checkpoints under the released file names, in the Hub's URL
layout: single files in the repackaged-files repository and ComfyUI's text-encoder
repository, official folders in the release repository (its VAE as a pickled ``.bin``, as
released). ``HF_ENDPOINT`` points ``huggingface_hub`` at it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file

from fake_hub import FakeHub
from support import REPO_ROOT
from tiny_checkpoints import GOLDEN, single_file, tiny_clip, tiny_t5, write_text_encoder_folder

from pyramid_core.hub import catalog
from pyramid_core.hub.cli import download_main
from pyramid_core.hub.pack import pack_main
from pyramid_core.loading import detect_kind, load_vae, read_shapes, read_state_dict
from pyramid_core.variants import choose_variant


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.clone().contiguous() for k, v in tensors.items()})   # T5 ties its embeddings


def _folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The fake Hub's repositories: tiny models under the released names and layouts."""
    work = tmp_path_factory.mktemp("published")
    flux = (GOLDEN / "weights_flux_tiny.safetensors").read_bytes()
    single_file(GOLDEN / "config_vae_tiny.json", GOLDEN / "weights_vae_tiny.safetensors", work / "vae.safetensors")
    singles = {f.path: flux for f in catalog.DIT_FILES.values()}
    singles[catalog.VAE_FILE.path] = (work / "vae.safetensors").read_bytes()
    text = {}
    for file in catalog.T5_FILES.values():
        text[file.path] = _safetensors_bytes(tiny_t5()[1].state_dict())
    text[catalog.CLIP_L_FILE.path] = _safetensors_bytes(tiny_clip()[1].state_dict())
    release = {}
    for folder in ("diffusion_transformer_384p", "diffusion_transformer_768p", "diffusion_transformer_image"):
        release[f"{folder}/config.json"] = (GOLDEN / "config_flux_tiny.json").read_bytes()
        release[f"{folder}/diffusion_pytorch_model.safetensors"] = flux
    buffer = io.BytesIO()
    torch.save(load_file(str(GOLDEN / "weights_vae_tiny.safetensors")), buffer)     # the release's .bin
    release["causal_video_vae/config.json"] = (GOLDEN / "config_vae_tiny.json").read_bytes()
    release["causal_video_vae/diffusion_pytorch_model.bin"] = buffer.getvalue()
    release.update(_folder_files(write_text_encoder_folder(work / "te"), "").items())
    release = {k.lstrip("/"): v for k, v in release.items()}
    release["README.md"] = b"the release's model card"
    return {catalog.SINGLE_FILES_REPO: singles, catalog.TEXT_ENCODERS_REPO: text, catalog.MINIFLUX_REPO: release}


@pytest.fixture
def hub(published, monkeypatch, tmp_path):
    """The fake Hub, running; the catalog's published text-encoder checksums are those of its tiny files."""
    text = published[catalog.TEXT_ENCODERS_REPO]
    digest = lambda file: hashlib.sha256(text[file.path]).hexdigest()   # noqa: E731
    monkeypatch.setattr(catalog, "T5_FILES", {k: _with_sha(f, digest(f)) for k, f in catalog.T5_FILES.items()})
    monkeypatch.setattr(catalog, "CLIP_L_FILE", _with_sha(catalog.CLIP_L_FILE, digest(catalog.CLIP_L_FILE)))
    monkeypatch.setenv("PYRAMID_CACHE_DIR", str(tmp_path / "cache"))
    # huggingface_hub writes what it receives in chunks of this size (10 MB): the bytes of a
    # cut response are kept up to the last whole chunk. Small here, for files of a few hundred KB.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    with FakeHub(published, commits={catalog.TEXT_ENCODERS_REPO: catalog.TEXT_ENCODERS_REVISION}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _with_sha(file: catalog.HubFile, sha256: str) -> catalog.HubFile:
    from dataclasses import replace

    return replace(file, sha256=sha256)


@pytest.fixture
def comfyui(tmp_path) -> Path:
    (tmp_path / "ComfyUI" / "models").mkdir(parents=True)
    return tmp_path / "ComfyUI"


def _download(capsys, *args) -> tuple[int, str, str]:
    code = download_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_variant_downloads_into_comfyui_where_the_loaders_look(hub, published, comfyui, capsys):
    code, out, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 0, err
    models = comfyui / "models"
    expected = {
        "diffusion_models/pyramid_flow_miniflux_bf16_v2.safetensors": published[catalog.SINGLE_FILES_REPO],
        "vae/pyramid_flow_vae_bf16.safetensors": published[catalog.SINGLE_FILES_REPO],
        "text_encoders/t5xxl_fp16.safetensors": published[catalog.TEXT_ENCODERS_REPO],
        "text_encoders/clip_l.safetensors": published[catalog.TEXT_ENCODERS_REPO],
    }
    for relative, repo in expected.items():
        assert (models / relative).read_bytes() == repo[Path(relative).name], relative
        assert relative in out                       # listed, with its size, before the download
    assert "to download:" in out and "KB" in out
    assert not list(models.rglob("*.part")), "partial files left behind"
    # the loaders' own detection: a miniFLUX DiT, read as the 384p model from its name; the VAE
    dit = models / "diffusion_models" / "pyramid_flow_miniflux_bf16_v2.safetensors"
    assert choose_variant(detect_kind(read_shapes(dit)), dit.name)[0].name == "miniflux-384p"
    assert detect_kind(read_shapes(models / "vae" / "pyramid_flow_vae_bf16.safetensors")) == "vae"

    # a second run finds everything in place and downloads nothing
    before = len(hub.requests)
    code, out, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 0, err
    assert out.count("in place") == 4 and "to download: 0 B" in out
    assert not [r for r in hub.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]


def test_the_fp8_files_and_the_768p_model(hub, comfyui, capsys):
    code, out, err = _download(capsys, "miniflux-768p", "--comfyui", str(comfyui), "--fp8")
    assert code == 0, err
    names = {p.relative_to(comfyui / "models").as_posix() for p in (comfyui / "models").rglob("*.safetensors")}
    assert names == {"diffusion_models/pyramid_flow_miniflux_768_fp8_e4m3fn.safetensors",
                     "vae/pyramid_flow_vae_bf16.safetensors", "text_encoders/t5xxl_fp8_e4m3fn.safetensors",
                     "text_encoders/clip_l.safetensors"}
    assert choose_variant("flux", "pyramid_flow_miniflux_768_fp8_e4m3fn.safetensors")[0].name == "miniflux-768p"


def test_a_cut_connection_resumes_where_it_stopped(hub, comfyui, capsys):
    name = catalog.VAE_FILE.path
    hub.cut(name, after=3072)
    code, _, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 0, err
    assert hub.gets(name) == [None, "bytes=3072-"]         # the same run asked for the rest only
    vae = comfyui / "models" / "vae" / name
    assert load_file(str(vae)).keys() == load_file(str(GOLDEN / "weights_vae_tiny.safetensors")).keys()


def test_a_download_stopped_for_good_resumes_on_the_next_run(hub, published, comfyui, capsys):
    name = catalog.VAE_FILE.path
    hub.cut(name, after=5120, refuse=1)                    # the connection drops and stays down
    code, _, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 1 and "run the same command again to resume" in err
    vae = comfyui / "models" / "vae" / name
    partial = list(vae.parent.glob(f".{name}.*.part"))
    assert not vae.exists() and len(partial) == 1 and partial[0].stat().st_size == 5120
    code, out, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 0, err
    assert "resumes" in out
    assert hub.gets(name)[-1] == "bytes=5120-"
    assert vae.read_bytes() == published[catalog.SINGLE_FILES_REPO][name]
    assert not partial[0].exists()


def test_a_corrupted_file_is_refused_by_its_checksum(hub, comfyui, capsys):
    name = catalog.VAE_FILE.path
    hub.corrupt(name)
    code, _, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 1
    assert "SHA256" in err and "not the published" in err and name in err
    vae_folder = comfyui / "models" / "vae"
    assert not (vae_folder / name).exists() and not list(vae_folder.glob("*.part"))


def test_a_file_changed_upstream_is_refused_before_anything_downloads(hub, comfyui, capsys, monkeypatch):
    monkeypatch.setattr(catalog, "CLIP_L_FILE", _with_sha(catalog.CLIP_L_FILE, "0" * 64))
    code, _, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 1 and "changed upstream" in err
    assert not [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_an_unknown_variant_is_refused_with_the_known_ones(capsys, comfyui):
    code, _, err = _download(capsys, "miniflux-1080p", "--comfyui", str(comfyui))
    assert code == 2
    assert "miniflux-1080p" in err and all(name in err for name in ("miniflux-384p", "miniflux-768p", "sd3-768p"))


def test_dry_run_and_a_full_disk(hub, comfyui, capsys, monkeypatch):
    code, out, _ = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui), "--dry-run")
    assert code == 0 and "t5xxl_fp16.safetensors" in out
    assert not list((comfyui / "models").rglob("*.safetensors"))
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    code, _, err = _download(capsys, "miniflux-384p", "--comfyui", str(comfyui))
    assert code == 2 and "free" in err and "needs" in err
    assert not list((comfyui / "models").rglob("*.part"))


def test_the_official_layout_in_its_own_folder_from_a_separate_process(hub, published, tmp_path):
    """As a user runs it: a new process, ``HF_ENDPOINT`` from the environment, the 1024p image
    model's release folders (the VAE's .bin included), ready for ``--model-dir``."""
    target = tmp_path / "pyramid-flow-miniflux"
    run = subprocess.run([sys.executable, "-m", "pyramid_core", "download", "miniflux-image", "--to", str(target)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0, run.stderr
    release = published[catalog.MINIFLUX_REPO]
    wanted = [p for p in release if p.split("/")[0] in
              ("diffusion_transformer_image", "causal_video_vae", *catalog.TEXT_ENCODER_FOLDERS["flux"])]
    for path in wanted:
        assert (target / path).read_bytes() == release[path], path
    assert not (target / "diffusion_transformer_384p").exists() and not (target / "README.md").exists()
    assert f"--model-dir {target}" in run.stdout


def test_pack_folder_makes_the_single_files_the_loaders_take(hub, published, tmp_path, comfyui, capsys):
    release = tmp_path / "pyramid-flow-miniflux"
    for path, data in published[catalog.MINIFLUX_REPO].items():
        (release / path).parent.mkdir(parents=True, exist_ok=True)
        (release / path).write_bytes(data)
    assert pack_main([str(release), "--comfyui", str(comfyui), "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    models = comfyui / "models"
    vae = models / "vae" / "pyramid_flow_miniflux_vae_bf16.safetensors"
    assert str(vae) in out
    original = torch.load(io.BytesIO(published[catalog.MINIFLUX_REPO]["causal_video_vae/diffusion_pytorch_model.bin"]),
                          weights_only=True)
    packed = read_state_dict(vae)
    assert packed.keys() == original.keys()
    assert all(packed[k].dtype == torch.bfloat16 and torch.equal(packed[k], original[k].bfloat16()) for k in packed)
    load_vae(vae, dtype="fp32")                             # the config travels in the metadata
    for resolution in ("384p", "768p", "image"):
        dit = models / "diffusion_models" / f"pyramid_flow_miniflux_{resolution}_bf16.safetensors"
        assert choose_variant(detect_kind(read_shapes(dit)), dit.name)[0].name == f"miniflux-{resolution}"
        assert json.loads(_metadata(dit)["config"]) == {k: v for k, v in json.loads(
            (GOLDEN / "config_flux_tiny.json").read_text()).items() if not k.startswith("_")}
    # one model folder alone, kept in its stored precision
    assert pack_main([str(release / "causal_video_vae"), "--out", str(tmp_path / "one")]) == 0
    single = tmp_path / "one" / "pyramid_flow_miniflux_vae.safetensors"
    assert all(torch.equal(v, original[k]) for k, v in read_state_dict(single).items())
    assert pack_main([str(tmp_path / "one")]) == 2
    assert "neither a model folder" in capsys.readouterr().err


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_where_to_get_names_the_url_and_the_command():
    hint = catalog.where_to_get("diffusion_models", "pyramid_flow_miniflux_bf16_v2.safetensors")
    assert "https://huggingface.co/Kijai/pyramid-flow-comfy/resolve/main/pyramid_flow_miniflux_bf16_v2.safetensors" in hint
    assert "python -m pyramid_core download miniflux-384p --comfyui" in hint
    folder = catalog.where_to_get("diffusion_models", "pyramid-flow-miniflux/diffusion_transformer_image")
    assert "download miniflux-image" in folder and "official folder" in folder
    assert catalog.where_to_get("vae", "pyramid_flow_miniflux_bf16_v2.safetensors") is None
    assert catalog.where_to_get("vae", "something_else.safetensors") is None

