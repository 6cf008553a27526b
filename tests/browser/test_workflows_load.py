"""Every UI-format workflow opens in the real ComfyUI page with no missing node and no bad link.

The page is the frontend that the pinned ComfyUI serves (``comfyui-frontend-package``), in
Debian's headless Chromium driven by Playwright (no browser download). Each workflow leaves
a screenshot in ``tests/_artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from support import REPO_ROOT, require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# UI-format graphs: the pack's workflows (the API twins live in workflows/api/) and the
# core-only graphs kept in tests/ so that the test runs before any workflow exists.
UI_WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json")) + sorted(
    (REPO_ROOT / "tests" / "data" / "workflows").glob("*.json"))

INSPECT_JS = """async (wf) => {
    const reg = window.LiteGraph.registered_node_types;
    const wanted = [...new Set(wf.nodes.map(n => n.type))];
    const missingByRegistry = wanted.filter(t => !(t in reg));
    const missingByDialog = [];
    const original = app.showMissingNodesError?.bind(app);
    app.showMissingNodesError = (types) => {
        missingByDialog.push(...types.map(t => typeof t === 'string' ? t : (t.type || JSON.stringify(t))));
        return original?.(types);
    };
    try { await app.loadGraphData(wf); } finally { if (original) app.showMissingNodesError = original; }

    // Every link of the file must survive loading, join existing slots and carry a type
    // that the target input accepts.
    const badLinks = [];
    const loaded = app.graph.links instanceof Map ? [...app.graph.links.values()]
                                                  : Object.values(app.graph.links || {});
    const loadedIds = new Set(loaded.filter(Boolean).map(l => l.id));
    for (const [id, originId, originSlot, targetId, targetSlot, type] of wf.links) {
        const origin = app.graph.getNodeById(originId), target = app.graph.getNodeById(targetId);
        const out = origin?.outputs?.[originSlot], inp = target?.inputs?.[targetSlot];
        let why = null;
        if (!loadedIds.has(id)) why = 'dropped on load';
        else if (!out || !inp) why = 'slot does not exist';
        else if (!window.LiteGraph.isValidConnection(out.type, inp.type)) why = `type ${out.type} -> ${inp.type}`;
        else if (inp.link !== id) why = 'input is not wired to this link';
        if (why) badLinks.push({id, originId, originSlot, targetId, targetSlot, type, why});
    }
    // Required inputs that are neither linked nor a widget would fail on queueing.
    const unconnected = [];
    for (const node of app.graph.nodes) {
        for (const inp of node.inputs || []) {
            if (inp.link == null && !inp.widget && !inp.optional && !node.widgets?.some(w => w.name === inp.name))
                unconnected.push(`${node.type}#${node.id}.${inp.name}`);
        }
    }
    const prompt = await app.graphToPrompt();
    return {missingByRegistry, missingByDialog, badLinks, unconnected,
            nodesWithErrors: app.graph.nodes.filter(n => n.has_errors).map(n => `${n.type}#${n.id}`),
            apiPrompt: prompt.output};
}"""


@pytest.fixture(scope="module")
def page(comfyui, artifacts_dir):
    require(Path(CHROMIUM).is_file(), f"browser tests need Debian's chromium at {CHROMIUM}: "
                                       "bash scripts/comfyui_env.sh browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "browser tests need the playwright package: bash scripts/comfyui_env.sh browser")
    # Server-side settings: no first-run templates dialog, keep the missing-nodes warning on.
    for key, value in {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True}.items():
        comfyui.post_json(f"/settings/{key}", value)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    errors: list[str] = []
    external: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})

        def keep_on_loopback(route):  # the page must never leave this machine
            if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost", None):
                return route.continue_()
            external.append(route.request.url)
            return route.abort()

        context.route("**/*", keep_on_loopback)
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.on("pageerror", lambda err: errors.append(str(err)[:300]))
        pg.goto(comfyui.url + "/", wait_until="domcontentloaded")
        pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                             "Object.keys(window.LiteGraph.registered_node_types).length > 100")
        pg.page_errors = errors
        try:
            yield pg
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_there_is_something_to_load():
    assert UI_WORKFLOWS, "no UI-format workflow found"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_workflow_loads_in_the_page(page, path, artifacts_dir):
    workflow = json.loads(path.read_text())
    assert isinstance(workflow.get("nodes"), list), f"{path.name} is not a UI-format workflow"
    result = page.evaluate(INSPECT_JS, workflow)
    page.wait_for_timeout(500)  # let the canvas draw before the screenshot
    page.screenshot(path=str(artifacts_dir / f"workflow-{path.stem}.png"))

    invalid = page.get_by_text("Invalid workflow", exact=False)
    assert invalid.count() == 0, f"the page rejected the file's schema: {invalid.first.inner_text()[:1500]}"
    assert not result["missingByRegistry"], f"unknown node types: {result['missingByRegistry']}"
    assert not result["missingByDialog"], f"frontend reported missing nodes: {result['missingByDialog']}"
    assert not result["badLinks"], f"invalid links: {result['badLinks']}"
    assert not result["unconnected"], f"required inputs left unconnected: {result['unconnected']}"
    assert not result["nodesWithErrors"], f"nodes with errors: {result['nodesWithErrors']}"
    expected = sorted(n["type"] for n in workflow["nodes"] if n.get("mode", 0) == 0
                      and n["type"] not in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"))
    api = result["apiPrompt"]
    assert sorted(node["class_type"] for node in api.values()) == expected
    twin = REPO_ROOT / "workflows" / "api" / path.name
    if path.parent == REPO_ROOT / "workflows":
        assert twin.is_file(), f"{path.name} has no API-format twin in workflows/api/"
        # What the page would queue is exactly the API twin (same nodes, values and links).
        assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()} == \
            {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in json.loads(twin.read_text()).items()}
    assert not page.page_errors, f"page errors: {page.page_errors}"


def test_inspection_catches_a_broken_workflow(page):
    """The checks above can fail: an unknown node type and a mistyped link are reported."""
    workflow = json.loads((REPO_ROOT / "tests" / "data" / "workflows" / "core_only.json").read_text())
    workflow["nodes"].append({
        "id": 3, "type": "NoSuchPyramidNode", "pos": [60, 400], "size": [200, 80], "flags": {}, "order": 2,
        "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": []})
    workflow["nodes"].append({
        "id": 4, "type": "VAEDecode", "pos": [420, 400], "size": [200, 80], "flags": {}, "order": 3, "mode": 0,
        "inputs": [{"name": "samples", "type": "LATENT", "link": 2}, {"name": "vae", "type": "VAE", "link": None}],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [], "slot_index": 0}],
        "properties": {}, "widgets_values": []})
    workflow["nodes"][0]["outputs"][0]["links"].append(2)
    workflow["links"].append([2, 1, 0, 4, 0, "IMAGE"])  # IMAGE into a LATENT input
    workflow["last_node_id"], workflow["last_link_id"] = 4, 2
    result = page.evaluate(INSPECT_JS, workflow)
    assert result["missingByRegistry"] == ["NoSuchPyramidNode"]
    assert [link["id"] for link in result["badLinks"]] == [2]
    assert "VAEDecode#4.vae" in result["unconnected"]
