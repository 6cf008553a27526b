"""Every UI-format workflow opens in the real ComfyUI page with no missing node and no bad link.

The page is the frontend that the pinned ComfyUI serves (``comfyui-frontend-package``), in
Debian's headless Chromium driven by Playwright (no browser download). Each workflow leaves
a screenshot in ``tests/_artifacts/`` for a person to look at. Also: the shipped workflows
open fitted to a small window, their stand-in versions (what ``serve`` offers without real
models) queue what the demo runs, and a video queued from the page carries its workflow back
into the page when it is dropped on it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from comfyui_harness import output_files
from browser_support import open_pack_templates, open_page
from support import REPO_ROOT
from tiny_checkpoints import load_api_workflow, shrink, shrink_ui
from ui_workflows import MARGINS, TITLE_HEIGHT, VIEWPORT, fit_view, set_widget_values

MISSING_MODELS_WARNING = "Comfy.Workflow.ShowMissingModelsWarning"
# UI-format graphs: the pack's workflows (the API twins live in workflows/api/) and the
# core-only graphs kept in tests/ so that the test runs before any workflow exists.
SHIPPED = sorted((REPO_ROOT / "workflows").glob("*.json"))
UI_WORKFLOWS = SHIPPED + sorted((REPO_ROOT / "tests" / "data" / "workflows").glob("*.json"))

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
def page(tiny_comfyui, chromium):
    comfyui = tiny_comfyui
    # Server-side settings: no first-run templates dialog, keep the missing-nodes warning on; the
    # missing-models dialog stays off (the stand-ins replace the text encoder files) but for the
    # tests of that dialog (_fresh_page).
    for key, value in {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True,
                       MISSING_MODELS_WARNING: False}.items():
        comfyui.post_json(f"/settings/{key}", value)
    pg = open_page(chromium, comfyui.url)
    try:
        yield pg
    finally:
        pg.close()


def test_there_is_something_to_load():
    assert UI_WORKFLOWS, "no UI-format workflow found"


def _check_loaded(page, workflow: dict, shot: Path, api_twin: dict | None) -> None:
    """Load ``workflow`` in the page and fail on anything the page or its queue would reject."""
    result = page.evaluate(INSPECT_JS, workflow)
    page.wait_for_timeout(500)  # let the canvas draw before the screenshot
    page.screenshot(path=str(shot))

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
    if api_twin is not None:
        # What the page would queue is exactly the API twin (same nodes, values and links).
        assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()} == \
            {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api_twin.items()}
    assert not page.page_errors, f"page errors: {page.page_errors}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_workflow_loads_in_the_page(page, path, artifacts_dir):
    workflow = json.loads(path.read_text())
    assert isinstance(workflow.get("nodes"), list), f"{path.name} is not a UI-format workflow"
    twin = REPO_ROOT / "workflows" / "api" / path.name
    if path in SHIPPED:
        assert twin.is_file(), f"{path.name} has no API-format twin in workflows/api/"
    _check_loaded(page, workflow, artifacts_dir / f"workflow-{path.stem}.png",
                  json.loads(twin.read_text()) if path in SHIPPED else None)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_stand_in_versions_queue_what_the_demo_runs(page, tiny_comfyui, path, artifacts_dir):
    """The stand-in versions (here of the random tiny models, ``demo --random-stand-ins``; the
    toy model's differ only in values): the tiny text encoders instead of the core
    DualCLIPLoader (which always builds a full-size T5-XXL), small sizes and few steps."""
    workflow = shrink_ui(path.stem, tiny_comfyui.object_info())
    _check_loaded(page, workflow, artifacts_dir / f"stand-in-{path.stem}.png", shrink(load_api_workflow(path.stem)))


FIT_JS = """() => {
    const ds = app.canvas.ds, out = [];
    for (const node of app.graph.nodes) {
        const [x, y] = node.pos, [w, h] = node.size;
        out.push({id: node.id, box: [(x + ds.offset[0]) * ds.scale, (y - %d + ds.offset[1]) * ds.scale,
                                     (x + w + ds.offset[0]) * ds.scale, (y + h + ds.offset[1]) * ds.scale]});
    }
    return {scale: ds.scale, nodes: out};
}""" % TITLE_HEIGHT


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_workflows_open_with_the_whole_graph_in_view(page, path, artifacts_dir):
    """In a 1280x720 window every node lies inside the canvas, clear of the page's bars and
    the minimap (the margins), at the view stored in the file (``scripts/ui_workflows.py``)."""
    workflow = json.loads(path.read_text())
    assert workflow["extra"]["ds"] == fit_view(workflow), \
        f"{path.name}: run python scripts/ui_workflows.py {path.relative_to(REPO_ROOT)}"
    page.set_viewport_size({"width": VIEWPORT[0], "height": VIEWPORT[1]})
    try:
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts_dir / f"fitted-{path.stem}.png"))
        view = page.evaluate(FIT_JS)
    finally:
        page.set_viewport_size({"width": 1400, "height": 900})
    assert view["scale"] == pytest.approx(workflow["extra"]["ds"]["scale"])
    left, top, right, bottom = MARGINS
    outside = [n for n in view["nodes"] if n["box"][0] < left - 1 or n["box"][1] < top - 1
               or n["box"][2] > VIEWPORT[0] - right + 1 or n["box"][3] > VIEWPORT[1] - bottom + 1]
    assert not outside, f"nodes outside the view: {outside}"


QUEUE_JS = """async (wf) => {
    await app.loadGraphData(wf);
    const before = app.graph.serialize();
    await app.queuePrompt(0, 1);
    return before;
}"""

DROP_JS = """async ({url, name}) => {
    const blob = await (await fetch(url)).blob();
    const file = new File([blob], name, {type: 'video/mp4'});
    await app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4, last_node_id: 0, last_link_id: 0});
    const transfer = new DataTransfer();
    transfer.items.add(file);
    document.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    for (let i = 0; i < 200 && app.graph.nodes.length === 0; i++) await new Promise(r => setTimeout(r, 50));
    return app.graph.serialize();
}"""


INFO_JS = """async (id) => {
    for (let i = 0; i < 100; i++) {
        const widget = app.graph.getNodeById(id)?.widgets?.find(w => w.name === 'pyramid_flow_info');
        if (widget?.value) return widget.value;
        await new Promise(r => setTimeout(r, 50));
    }
    return '';
}"""


def _graph_essentials(graph: dict) -> dict:
    nodes = {n["id"]: (n["type"], n.get("widgets_values"), n.get("mode", 0)) for n in graph["nodes"]}
    return {"nodes": nodes, "links": sorted(tuple(link[:6]) for link in graph["links"])}


def test_a_video_queued_from_the_page_brings_its_workflow_back_when_dropped(page, tiny_comfyui):
    """Share a workflow as a file: queue it from the page, then drop the mp4 it saved onto the
    page (its own file drop): the same graph with the same widget values comes back."""
    object_info = tiny_comfyui.object_info()
    workflow = shrink_ui("pyramid_flow_t2v_384p", object_info, seed=31)
    # inputs no other test gives the DiT Loader, so that it runs here instead of coming from
    # ComfyUI's cache (a cached node reports nothing to the page)
    set_widget_values(workflow, 2, {"offload": "offload_after_use"}, object_info)
    known = set(tiny_comfyui.get_json("/history"))
    before = page.evaluate(QUEUE_JS, workflow)
    deadline = time.monotonic() + 240
    while not (new := set(tiny_comfyui.get_json("/history")) - known) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert new, "the queued prompt did not finish"
    entry = tiny_comfyui.wait(new.pop(), timeout=240)
    assert entry["status"]["status_str"] == "success", entry["status"]
    # The DiT Loader says on the node which variant it chose and why (not a saved widget value).
    shown = page.evaluate(INFO_JS, 2)
    assert shown.startswith("variant miniflux-384p: the tensors are flux"), shown
    after = page.evaluate("() => app.graph.serialize()")
    assert _graph_essentials(after)["nodes"][2] == _graph_essentials(before)["nodes"][2]
    video = next(f for f in output_files(entry) if f["filename"].endswith(".mp4"))
    url = "/view?" + urlencode({"filename": video["filename"], "subfolder": video["subfolder"], "type": "output"})
    restored = page.evaluate(DROP_JS, {"url": url, "name": video["filename"]})
    assert _graph_essentials(restored) == _graph_essentials(before)
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


MISSING_MODELS_HOOK_JS = """() => {
    window.__missingModels = null;
    const original = app.showMissingModelsError.bind(app);
    app.showMissingModelsError = (models, paths) => {
        window.__missingModels = models.map(m => ({name: m.name, url: m.url, directory: m.directory}));
        return original(models, paths);
    };
}"""


def _fresh_page(page, comfyui, empty_model_folders: bool = False):
    """A new tab on the server (nothing cached by the page), optionally with every model
    folder reading as empty, as on a machine without the weights."""
    import re

    routes = {re.compile(r".*/api/experiment/models/[^/?]+$"): lambda route: route.fulfill(json=[])}
    comfyui.post_json(f"/settings/{MISSING_MODELS_WARNING}", empty_model_folders)
    try:                                         # read by the page as it starts
        tab = open_page(page.context, comfyui.url, routes if empty_model_folders else None)
    finally:
        comfyui.post_json(f"/settings/{MISSING_MODELS_WARNING}", False)
    # The page restores the last workflow of the session, which may open a dialog (missing models)
    tab.wait_for_timeout(1000)
    for _ in range(5):
        if not tab.locator(".p-dialog-mask").count():
            break
        tab.keyboard.press("Escape")
        tab.wait_for_timeout(300)
    return tab


def _pack_templates(tab):
    """Open ComfyUI's template browser at the pack's section, noting the missing-models dialog's list."""
    tab.evaluate(MISSING_MODELS_HOOK_JS)
    open_pack_templates(tab)


def test_the_template_browser_lists_the_workflows_with_their_thumbnails(page, tiny_comfyui, artifacts_dir):
    tab = _fresh_page(page, tiny_comfyui)
    try:
        _pack_templates(tab)
        tab.wait_for_function("(count) => { const imgs = [...document.querySelectorAll("
                              "'[role=dialog] img[alt^=pyramid_flow_]')]; "
                              "return imgs.length >= count && imgs.every(i => i.complete); }", arg=len(SHIPPED))
        shown = tab.evaluate("() => Object.fromEntries([...document.querySelectorAll("
                             "'[role=dialog] img[alt^=pyramid_flow_]')].map(i => [i.alt, i.naturalWidth]))")
        tab.screenshot(path=str(artifacts_dir / "template-browser.png"))
        assert sorted(shown) == sorted(p.stem for p in SHIPPED)
        assert all(width > 0 for width in shown.values()), f"thumbnails that did not load: {shown}"
        assert not tab.page_errors, tab.page_errors
    finally:
        tab.close()


def test_a_template_opened_without_the_weights_offers_each_file_for_download(page, tiny_comfyui, artifacts_dir):
    """From the template browser, on a ComfyUI whose model folders are empty: for every template
    the missing-models dialog lists each published file of the workflow with its download link
    and no complaint (a disallowed source, suffix or folder); the files that exist only as a
    folder are the note's (tests/test_workflow_models.py)."""
    tab = _fresh_page(page, tiny_comfyui, empty_model_folders=True)
    try:
        for path in SHIPPED:
            workflow = json.loads(path.read_text())
            _pack_templates(tab)
            tab.locator(f"[role=dialog] img[alt={path.stem}]").click()
            tab.wait_for_function("() => window.__missingModels !== null")
            dialog = tab.get_by_text("Missing Models").locator("xpath=ancestor::*[@role='dialog']")
            text = dialog.inner_text()
            tab.screenshot(path=str(artifacts_dir / f"missing-models-{path.stem}.png"))
            missing = tab.evaluate("() => window.__missingModels")
            wanted = [{k: e[k] for k in ("name", "url", "directory")} for e in workflow["models"]]
            assert sorted(missing, key=str) == sorted(wanted, key=str), path.stem
            for entry in wanted:
                assert f"{entry['directory']} / {entry['name']}" in text, path.stem
            assert text.count("Download") == len(wanted), text
            assert "not allowed" not in text and "Invalid directory" not in text and "Only allowed" not in text, text
            tab.keyboard.press("Escape")                         # close the dialog for the next template
            tab.wait_for_function("() => !document.querySelector('.p-dialog-mask')")
        assert not tab.page_errors, tab.page_errors
    finally:
        tab.close()


def test_queueing_with_a_missing_dit_is_refused_before_any_node_runs(page, tiny_comfyui):
    """Run pressed on a workflow whose DiT file is absent: the server refuses the prompt as it
    is queued, with the loader's message (file, folder, address, command), and nothing runs."""
    object_info = tiny_comfyui.object_info()
    workflow = shrink_ui("pyramid_flow_t2v_384p", object_info, seed=41)
    missing = "pyramid_flow_miniflux_768_fp8_e4m3fn.safetensors"          # published, never a stand-in here
    assert not (tiny_comfyui.models_dir / "diffusion_models" / missing).exists()
    set_widget_values(workflow, 2, {"dit_name": missing}, object_info)
    before = set(tiny_comfyui.get_json("/history"))
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as answer:
        page.evaluate("() => app.queuePrompt(0, 1)")
    assert answer.value.status == 400
    errors = answer.value.json()["node_errors"]
    assert list(errors) == ["2"], errors                   # the DiT Loader, and only it
    message = " ".join(e["details"] for e in errors["2"]["errors"])
    assert f"'{missing}' is not in models/diffusion_models" in message
    assert f"https://huggingface.co/Kijai/pyramid-flow-comfy/resolve/main/{missing}" in message
    assert "python -m pyramid_core download miniflux-768p --comfyui" in message
    page.wait_for_timeout(500)
    assert set(tiny_comfyui.get_json("/history")) == before, "something ran"
    page.keyboard.press("Escape")                          # the page's error dialog
