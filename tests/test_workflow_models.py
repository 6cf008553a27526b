"""The shipped workflows name files that can be downloaded as they are, with the metadata
ComfyUI's missing-models dialog reads, and the loaders read each name as the right model.

The dialog (comfyui-frontend-package, MissingModelsWarning) offers an entry whose ``name`` is
a widget value of its node, whose URL starts with https://huggingface.co/ or
https://civitai.com/, whose name ends in .safetensors or .sft, and whose directory is a model
folder ComfyUI knows; ``workflow_models.py`` writes the entries from the pack's catalog.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

import pytest

from support import REPO_ROOT
from tiny_checkpoints import write_stand_ins
from workflow_models import LOADERS, attach_models, folder_values, loader_values

from pyramid_core.hub.catalog import known_files
from pyramid_core.loading import detect_kind, read_shapes
from pyramid_core.variants import choose_variant

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
HF_RESOLVE = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[\w.-]+/(?P<path>[\w./-]+)$")
COMFYUI_FOLDERS = {"diffusion_models", "vae", "text_encoders"}
# What each loader's node reads, and what each workflow is for.
KIND_OF_LOADER = {"PyramidFlowDiTLoader": "dit", "PyramidFlowVAELoader": "vae", "DualCLIPLoader": "text_encoder"}
VARIANT_OF_WORKFLOW = {"pyramid_flow_t2v_768p": "miniflux-768p", "pyramid_flow_t2i_1024p": "miniflux-image"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_loader_file_has_a_download_entry(path):
    workflow = json.loads(path.read_text())
    values = list(loader_values(workflow))
    assert {n["type"] for n, _, _ in values} >= {"PyramidFlowDiTLoader", "PyramidFlowVAELoader", "DualCLIPLoader"}
    folders = folder_values(workflow)
    for node, directory, value in values:
        entries = [e for e in node.get("properties", {}).get("models", []) if e["name"] == value]
        if (directory, value) in folders:
            assert not entries, f"{value}: a folder cannot be downloaded by the page"
            continue
        assert len(entries) == 1, f"{node['type']} #{node['id']}: no models entry for {value!r}"
        entry = entries[0]
        match = HF_RESOLVE.match(entry["url"])
        assert match, f"{entry['url']}: not a Hugging Face resolve URL"
        assert PurePosixPath(match["path"]).name == value, entry["url"]
        assert value.endswith((".safetensors", ".sft")), value
        assert entry["directory"] == directory and directory in COMFYUI_FOLDERS
        if "hash" in entry:
            assert entry["hash_type"] == "SHA256" and re.fullmatch(r"[0-9a-f]{64}", entry["hash"])
        assert entry in workflow["models"], "the workflow-level models list lacks it"
    # nothing else in the lists, and exactly what the catalog says (python scripts/workflow_models.py)
    assert workflow == attach_models(json.loads(path.read_text())), f"run python scripts/workflow_models.py {path}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_folder_the_page_cannot_download_is_explained_in_a_note(path):
    workflow = json.loads(path.read_text())
    notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote"))
    files = known_files()
    for directory, value in folder_values(workflow):
        variant = files[value][1]
        assert f"python -m pyramid_core download {variant} --comfyui" in notes, value
        assert files[value][0].repo in notes


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_the_loaders_read_each_name_as_the_right_model(path):
    """The catalog's kind for each loader, and the DiT Loader's name-based variant detection
    (the released files of one family have identical tensors) gives the workflow's variant."""
    workflow = json.loads(path.read_text())
    files = known_files()
    for node, directory, value in loader_values(workflow):
        assert files[value][0].kind == KIND_OF_LOADER[node["type"]], value
        if node["type"] == "PyramidFlowDiTLoader":
            wanted = VARIANT_OF_WORKFLOW.get(path.stem, "miniflux-384p")
            assert choose_variant("flux", value)[0].name == wanted == files[value][1], value


def test_the_stand_ins_take_the_workflow_names_and_read_as_their_kind(tmp_path):
    """What the demo and the tests put in place of the weights answers to the same names, and
    the loaders' detection reads each as the model its loader expects."""
    (tmp_path / "input").mkdir()
    write_stand_ins(tmp_path / "models", tmp_path / "input")
    for path in WORKFLOWS:
        for node, directory, value in loader_values(json.loads(path.read_text())):
            if node["type"] not in ("PyramidFlowDiTLoader", "PyramidFlowVAELoader"):
                continue
            stand_in = tmp_path / "models" / directory / value
            assert stand_in.exists(), f"{path.stem}: no stand-in for {directory}/{value}"
            assert detect_kind(read_shapes(stand_in)) == ("vae" if directory == "vae" else "flux")


def test_the_checks_fail_on_a_workflow_naming_an_unknown_file():
    workflow = json.loads(WORKFLOWS[0].read_text())
    dit = next(n for n in workflow["nodes"] if n["type"] == "PyramidFlowDiTLoader")
    dit["widgets_values"][0] = "pyramid_flow_miniflux_384p.safetensors"       # exists nowhere to download
    with pytest.raises(ValueError, match="not a published file"):
        attach_models(workflow)
    assert set(LOADERS) >= set(KIND_OF_LOADER)
