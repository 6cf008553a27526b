"""The download metadata of the shipped workflows, from ``pyramid_core.hub.catalog``.

ComfyUI's page offers to download a workflow's missing models from ``models`` entries
(``{name, url, directory}``, optionally ``hash``/``hash_type``): a loader node's
``properties.models`` and the workflow's own ``models`` list. It offers an entry whose
``name`` is one of the node's widget values, whose URL is on huggingface.co (or civitai.com)
and ends in ``.safetensors``/``.sft``, and whose directory is a model folder ComfyUI knows.

A loader value with no single file to download (an official folder, such as the 1024p image
model's) gets no entry; the workflow says in a note how to fetch the folder.

``python scripts/workflow_models.py`` rewrites the entries of every workflow in
``workflows/`` from the catalog (run it after changing the catalog or a loader's value).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyramid_core.hub.catalog import known_files  # noqa: E402

# Loader node types and which of their widget values name files, with the folder they list.
LOADERS = {
    "PyramidFlowDiTLoader": ((0, "diffusion_models"),),
    "PyramidFlowVAELoader": ((0, "vae"),),
    "DualCLIPLoader": ((0, "text_encoders"), (1, "text_encoders")),
    "TripleCLIPLoader": ((0, "text_encoders"), (1, "text_encoders"), (2, "text_encoders")),
}


def loader_values(workflow: dict):
    """``(node, directory, value)`` of every file or folder a loader node of ``workflow`` names."""
    for node in workflow["nodes"]:
        for index, directory in LOADERS.get(node["type"], ()):
            yield node, directory, node["widgets_values"][index]


def folder_values(workflow: dict) -> list[tuple[str, str]]:
    """``(directory, value)`` of loader values that name an official folder (no single file)."""
    files = known_files()
    return [(directory, value) for _, directory, value in loader_values(workflow)
            if value in files and files[value][0].is_folder]


def attach_models(workflow: dict) -> dict:
    """Set each loader's ``properties.models`` and the workflow's ``models`` (in place); returns it.

    Raises ``ValueError`` for a loader value the catalog does not know (a workflow must name
    files that can be downloaded as they are)."""
    files = known_files()
    everything = []
    for node in workflow["nodes"]:
        if node["type"] not in LOADERS:
            continue
        entries = []
        for _, directory, value in ((n, d, v) for n, d, v in loader_values(workflow) if n is node):
            if value not in files or files[value][0].directory != directory:
                raise ValueError(f"{node['type']} #{node['id']}: {value!r} is not a published file of "
                                 f"models/{directory} (pyramid_core/hub/catalog.py)")
            if not files[value][0].is_folder:
                entries.append(files[value][0].model_entry())
        node.setdefault("properties", {})["models"] = entries
        if not entries:
            del node["properties"]["models"]
        everything += [e for e in entries if e not in everything]
    workflow["models"] = everything
    return workflow


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv or [])] or sorted((ROOT / "workflows").glob("*.json"))
    for path in paths:
        workflow = attach_models(json.loads(path.read_text()))
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"{path}: {len(workflow['models'])} model entries; folders: {folder_values(workflow) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
