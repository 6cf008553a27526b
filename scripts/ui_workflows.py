"""Editing UI-format workflows (what the ComfyUI page saves and opens) with the server's node definitions.

A UI node keeps its widget values as a list, ``widgets_values``, in the order of the node's
widget inputs, where an input declared with ``control_after_generate`` is followed by one
more slot (``"fixed"``, ``"randomize"``, ...). ``/object_info`` gives that order, so values
can be read and written by input name. ``extra.ds`` is the view the page opens the graph at.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TITLE_HEIGHT = 30            # LiteGraph.NODE_TITLE_HEIGHT: a node's title sits above its pos


def _inputs(info: dict) -> list[tuple[str, list]]:
    """``(name, spec)`` of a node type's inputs in declaration order (required, then optional)."""
    order = info.get("input_order") or {group: list(specs) for group, specs in info["input"].items()}
    return [(name, info["input"][group][name]) for group in ("required", "optional") for name in order.get(group, [])]


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_slots(info: dict) -> list[str | None]:
    """The input name of each ``widgets_values`` slot of a node type (None: a control value)."""
    slots: list[str | None] = []
    for name, spec in _inputs(info):
        if _is_widget(spec):
            slots.append(name)
            if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate"):
                slots.append(None)
    return slots


def _node(workflow: dict, node_id: int) -> dict:
    for node in workflow["nodes"]:
        if node["id"] == node_id:
            return node
    raise KeyError(f"no node {node_id} in the workflow")


def widget_values(workflow: dict, node_id: int, object_info: dict) -> dict:
    """``{input name: value}`` of a node's widgets."""
    node = _node(workflow, node_id)
    slots = widget_slots(object_info[node["type"]])
    return {name: value for name, value in zip(slots, node.get("widgets_values") or []) if name is not None}


def set_widget_values(workflow: dict, node_id: int, values: dict, object_info: dict) -> None:
    """Write ``{input name: value}`` into a node's ``widgets_values`` (in place)."""
    node = _node(workflow, node_id)
    slots = widget_slots(object_info[node["type"]])
    current = list(node.get("widgets_values") or [])
    if len(current) != len(slots):
        raise ValueError(f"node {node_id} ({node['type']}) has {len(current)} widget values, its definition "
                         f"{len(slots)}: re-save the workflow in the page")
    for name, value in values.items():
        if name not in slots:
            raise KeyError(f"{node['type']} has no widget {name!r}")
        current[slots.index(name)] = value
    node["widgets_values"] = current


def replace_node(workflow: dict, node_id: int, new_type: str, object_info: dict,
                 retarget: dict[str, str]) -> None:
    """Give node ``node_id`` another type, keeping its place and its outgoing links (in place).

    The new type's widget values are its defaults (set them with :func:`set_widget_values`);
    a title given to the old node goes (it described the old type): the page shows the new
    type's display name.
    Each outgoing link takes the new output's type; where the old type is a key of
    ``retarget``, the link moves on its target node to the input named by the value (for
    example a CLIP link moving to a text encode's ``text_encoder`` input).
    """
    node, info = _node(workflow, node_id), object_info[new_type]
    node.pop("title", None)
    link_ids = [link for output in node.get("outputs", []) for link in (output.get("links") or [])]
    specs = dict(_inputs(info))
    widgets = [(name, spec) for name, spec in specs.items() if _is_widget(spec)]
    node.update(
        type=new_type,
        inputs=[{"localized_name": name, "name": name, "type": "COMBO" if isinstance(spec[0], list) else spec[0],
                 "widget": {"name": name}, "link": None} for name, spec in widgets],
        outputs=[{"localized_name": name, "name": name, "type": kind, "links": link_ids if i == 0 else [],
                  "slot_index": i} for i, (kind, name) in enumerate(zip(info["output"], info["output_name"]))],
        properties={"Node name for S&R": new_type},
        widgets_values=[_default(specs[name]) if name else "fixed" for name in widget_slots(info)],
    )
    new_type_out = info["output"][0]
    for link in workflow["links"]:
        if link[0] not in link_ids:
            continue
        old_type, target = link[5], _node(workflow, link[3])
        link[5] = new_type_out
        if old_type in retarget:
            target["inputs"][link[4]]["link"] = None
            slot = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == retarget[old_type])
            target["inputs"][slot]["link"] = link[0]
            link[4] = slot


def add_missing_inputs(workflow: dict, object_info: dict) -> list[str]:
    """Give every node the optional socket inputs its type gained since the file was saved
    (in place), as the page would save them; returns ``node#id.input`` of each one added."""
    added = []
    for node in workflow["nodes"]:
        info = object_info.get(node["type"])
        if info is None:
            continue
        have = {inp["name"] for inp in node.get("inputs", [])}
        for name, spec in _inputs(info):
            if name in have or _is_widget(spec) or name not in info["input"].get("optional", {}):
                continue
            node.setdefault("inputs", []).append({"localized_name": name, "name": name, "shape": 7, "type": spec[0],
                                                  "link": None, "optional": True})
            added.append(f"{node['type']}#{node['id']}.{name}")
    return added


def _default(spec: list):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
    return choices[0] if choices else None


# --------------------------------------------------------------------------------------
# the view a workflow opens at
# --------------------------------------------------------------------------------------

# The window the shipped workflows are fitted to (a small laptop browser window), less the
# page's own bars and buttons around the canvas: left, top, right, bottom.
VIEWPORT = (1280, 720)
MARGINS = (80, 140, 280, 30)


def graph_bounds(workflow: dict) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` around every node, titles included, in graph units."""
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in workflow.get("groups", [])]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def fit_view(workflow: dict, viewport: tuple[int, int] = VIEWPORT, margins=MARGINS) -> dict:
    """``extra.ds`` (scale, offset) showing the whole graph in ``viewport`` pixels, never zoomed above 1.

    LiteGraph draws graph point p at screen pixel ``(p + offset) * scale``.
    """
    x0, y0, x1, y1 = graph_bounds(workflow)
    left, top, right, bottom = margins
    width, height = viewport[0] - left - right, viewport[1] - top - bottom
    scale = min(1.0, width / (x1 - x0), height / (y1 - y0))
    return {"scale": round(scale, 4), "offset": [round(left / scale - x0, 2), round(top / scale - y0, 2)]}


# --------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------

COLUMN_GAP, NODE_GAP, ROW_GAP = 40, 40, 80
# The height the page gives these nodes once they have run (frontend 1.32.9, measured in
# headless Chromium): the samplers show a latent preview, the loaders and savers their media,
# the DiT Loader its box of what it chose. A layout that leaves them less room has a node
# grow over the one below it after a run (tests/browser checks that none does).
RUN_HEIGHTS = {"PyramidFlowDiTLoader": 256, "PyramidFlowSampler": 614, "PyramidFlowStageSampler": 402,
               "SaveVideo": 368, "LoadImage": 314, "LoadVideo": 348}


def reserve_run_room(workflow: dict) -> None:
    """Give every node of :data:`RUN_HEIGHTS` at least that height (in place)."""
    for node in workflow["nodes"]:
        if node["type"] in RUN_HEIGHTS:
            node["size"] = [node["size"][0], max(node["size"][1], RUN_HEIGHTS[node["type"]])]


def _columns(workflow: dict) -> list[list[dict]]:
    """Nodes by column: a node sits one column right of its rightmost input; a node with no
    inputs (a loader) sits just left of its leftmost consumer, so that its wires stay short."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    sources = {nid: [] for nid in nodes}
    consumers = {nid: [] for nid in nodes}
    for _, origin, _, target, _, _ in workflow["links"]:
        sources[target].append(origin)
        consumers[origin].append(target)
    depth: dict[int, int] = {}

    def longest(nid: int) -> int:
        if nid not in depth:
            depth[nid] = 1 + max((longest(s) for s in sources[nid]), default=-1)
        return depth[nid]

    for nid in nodes:
        longest(nid)
    for nid in nodes:
        if not sources[nid] and consumers[nid]:
            depth[nid] = min(depth[c] for c in consumers[nid]) - 1
    columns: dict[int, list[dict]] = {}
    for nid in sorted(nodes, key=lambda n: (depth[n], nodes[n]["pos"][1], n)):
        columns.setdefault(depth[nid], []).append(nodes[nid])
    return [columns[d] for d in sorted(columns)]


def _stacked_height(column: list[dict]) -> float:
    return sum(TITLE_HEIGHT + n["size"][1] for n in column) + NODE_GAP * (len(column) - 1)


def _pack_columns(columns: list[list[dict]], max_height: float | None) -> list[list[dict]]:
    """Consecutive columns stacked into one while the stack stays within ``max_height`` graph
    units (None: as they are). A chain such as decode -> video -> save then takes one column's
    width instead of three, which lets a wide graph open at a scale the page draws text at."""
    if max_height is None:
        return columns
    packed: list[list[dict]] = []
    for column in columns:
        if packed and _stacked_height(packed[-1] + column) <= max_height:
            packed[-1] = packed[-1] + column
        else:
            packed.append(list(column))
    return packed


def tidy_layout(workflow: dict, row_width: float, origin=(100.0, 100.0), max_height: float | None = None) -> None:
    """Place the nodes in columns left to right (packed by :func:`_pack_columns`), starting a
    new row below when a row would pass ``row_width`` graph units (in place)."""
    x0, y0 = origin
    x, row_top, row_bottom = x0, y0, y0
    for column in _pack_columns(_columns(workflow), max_height):
        width = max(n["size"][0] for n in column)
        if x > x0 and x + width > x0 + row_width:
            x, row_top = x0, row_bottom + ROW_GAP
        y = row_top
        for node in column:
            node["pos"] = [round(x, 2), round(y + TITLE_HEIGHT, 2)]
            y += TITLE_HEIGHT + node["size"][1] + NODE_GAP
        row_bottom = max(row_bottom, y - NODE_GAP)
        x += width + COLUMN_GAP


def tidy_and_fit(workflow: dict, viewport: tuple[int, int] = VIEWPORT) -> dict:
    """The layout (row width, column packing) that fits ``viewport`` at the largest scale,
    applied, and its view (in place); every node first gets the room it takes after a run
    (:func:`reserve_run_room`). Below a scale of about 0.6 the page leaves out the widgets' text."""
    reserve_run_room(workflow)
    columns = _columns(workflow)
    tallest, total = max(map(_stacked_height, columns)), _stacked_height([n for c in columns for n in c])
    heights = [None, *range(int(tallest), int(total) + 50, 25)]
    best = None
    for max_height in heights:
        for row_width in range(1200, 5001, 100):
            trial = {"nodes": [dict(n) for n in workflow["nodes"]], "links": workflow["links"]}
            tidy_layout(trial, row_width, max_height=max_height)
            scale = fit_view(trial, viewport)["scale"]
            if best is None or scale > best[0] + 1e-9:
                best = (scale, row_width, max_height)
    tidy_layout(workflow, best[1], max_height=best[2])
    workflow.setdefault("extra", {})["ds"] = fit_view(workflow, viewport)
    return workflow["extra"]["ds"]


def main(argv: list[str] | None = None) -> int:
    """``python scripts/ui_workflows.py FILE...``: lay out and fit UI workflows in place."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--keep-layout", action="store_true", help="only fit the view to the nodes as they are")
    args = parser.parse_args(argv)
    for path in args.files:
        workflow = json.loads(path.read_text())
        if args.keep_layout:
            workflow.setdefault("extra", {})["ds"] = fit_view(workflow)
        else:
            tidy_and_fit(workflow)
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"{path}: view {workflow['extra']['ds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
