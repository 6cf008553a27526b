"""``serve`` without the real weights, as a newcomer meets it in the real page: every template of
the template browser runs with one click on Run, to its video or image, with the samplers'
previews at the video's size and in the toy VAE's colours, and no node covers another after
the run. The server is set up by scripts/serve.py's own functions (``toy_comfyui``)."""

from __future__ import annotations

import json
import time

import pytest

from browser_support import open_pack_templates, open_page
from comfyui_harness import output_files
from support import REPO_ROOT
from tiny_checkpoints import TOY_PREVIEW, TOY_SIZE
from ui_workflows import TITLE_HEIGHT

TEMPLATES = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))

LAYOUT_JS = """() => app.graph.nodes.map(n => ({
    node: `${n.type}#${n.id}`,
    box: [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1]],
    preview: n.type.endsWith('Sampler') && n.imgs?.length ? [n.imgs[0].naturalWidth, n.imgs[0].naturalHeight] : null,
    info: n.widgets?.find(w => w.name === 'pyramid_flow_info')?.value ?? null,
}))"""


@pytest.fixture(scope="module")
def toy_page(toy_comfyui, chromium):
    toy_comfyui.post_json("/settings/Comfy.TutorialCompleted", True)      # no first-visit dialog
    tab = open_page(chromium, toy_comfyui.url)
    try:
        yield tab
    finally:
        tab.close()


def overlapping(layout: list[dict]) -> list[tuple[str, str]]:
    """Pairs of nodes whose boxes (title bar included) share more than a pixel's width."""
    pairs = []
    for i, a in enumerate(layout):
        for b in layout[i + 1:]:
            width = min(a["box"][2], b["box"][2]) - max(a["box"][0], b["box"][0])
            height = min(a["box"][3], b["box"][3]) - max(a["box"][1], b["box"][1])
            if width > 1 and height > 1:
                pairs.append((a["node"], b["node"]))
    return pairs


def settled_layout(tab, timeout: float = 15.0) -> list[dict]:
    """The page's node boxes once two readings half a second apart agree (outputs shown)."""
    previous, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        layout = tab.evaluate(LAYOUT_JS)
        if layout == previous:
            return layout
        previous = layout
        tab.wait_for_timeout(500)
    return previous


def test_the_template_browser_offers_the_toy_versions(toy_comfyui):
    listed = toy_comfyui.get_json("/workflow_templates")["pyramid-flow"]
    assert sorted(listed) == TEMPLATES
    served = toy_comfyui.base_dir / "custom_nodes" / "pyramid-flow" / "workflows"
    for name in TEMPLATES:
        workflow = json.loads((served / f"{name}.json").read_text())
        assert any(n["type"] == "MarkdownNote" and n.get("title") == "Toy model" for n in workflow["nodes"]), name
        assert not any(n["type"] == "DualCLIPLoader" or "T5-XXL" in n.get("title", "") for n in workflow["nodes"]), name
        assert {m["directory"] for m in workflow["models"]} <= {"diffusion_models", "vae"}, name   # no text encoders
        assert [n["widgets_values"][5] for n in workflow["nodes"] if n["type"] == "PyramidFlowDiTLoader"] == \
            [TOY_PREVIEW], name
        assert not overlapping([{"node": n["id"], "box": [n["pos"][0], n["pos"][1] - TITLE_HEIGHT,
                                                          n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]]}
                                for n in workflow["nodes"]])


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_template_runs_with_one_click_and_no_node_covers_another(toy_page, toy_comfyui, name, artifacts_dir):
    tab = toy_page
    open_pack_templates(tab)
    tab.locator(f"[role=dialog] img[alt={name}]").click()
    tab.wait_for_function("() => !document.querySelector('.p-dialog-mask')")
    expected = json.loads((toy_comfyui.base_dir / "custom_nodes" / "pyramid-flow" / "workflows" /
                           f"{name}.json").read_text())
    tab.wait_for_function("(count) => app.graph.nodes.length === count", arg=len(expected["nodes"]))
    loaded = tab.evaluate("() => app.graph.nodes.map(n => [n.id, n.type])")
    assert sorted(map(tuple, loaded)) == sorted((n["id"], n["type"]) for n in expected["nodes"])
    known = set(toy_comfyui.get_json("/history"))
    tab.locator('[data-testid="queue-button"]').first.click()                   # Run
    deadline = time.monotonic() + 300
    while not (new := set(toy_comfyui.get_json("/history")) - known) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert new, f"{name}: Run queued nothing that finished"
    entry = toy_comfyui.wait(new.pop(), timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = [f["filename"] for f in output_files(entry) if f.get("type") == "output"]
    assert saved and all(f.endswith(".png" if name.startswith("pyramid_flow_t2i") else ".mp4") for f in saved), saved
    layout = settled_layout(tab)
    tab.screenshot(path=str(artifacts_dir / f"serve-template-{name}.png"))
    assert not overlapping(layout), f"{name}: nodes that cover each other after the run: {overlapping(layout)}"
    # The DiT Loader says what it chose; one whose output ComfyUI took from its cache (the
    # previous template loaded the same file) reports nothing to the page, so shows its placeholder.
    cached = {node for kind, data in entry["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]}
    dit = next(n for n in expected["nodes"] if n["type"] == "PyramidFlowDiTLoader")
    info = next(n["info"] for n in layout if n["node"] == f"PyramidFlowDiTLoader#{dit['id']}")
    assert info == "" if str(dit["id"]) in cached else info.startswith("variant miniflux-"), (name, info, cached)
    previews = [n["preview"] for n in layout if n["preview"]]
    assert previews and all(size == [TOY_SIZE, TOY_SIZE] for size in previews), previews
    assert not tab.page_errors, tab.page_errors
