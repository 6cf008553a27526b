// Pyramid Flow for ComfyUI: nodes that report a line of text after they run (the DiT Loader:
// which variant it chose and why) show it in a read-only box on the node. The text is not a
// widget value: it is not saved in the workflow and never queued.
import { app } from "../../scripts/app.js";

const INFO = "pyramid_flow_info";

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === INFO);
  if (!widget) {
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.rows = 3;
    box.style.cssText = "width:100%;resize:none;font-size:11px;opacity:0.85;";
    widget = node.addDOMWidget(INFO, "pyramid_flow_info", box, {
      serialize: false,
      getValue: () => box.value,
      setValue: (value) => { box.value = value; },
    });
    widget.serialize = false;   // LiteGraph leaves widgets with serialize === false out of widgets_values
  }
  widget.value = text;
  widget.element && (widget.element.value = text);
  node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "pyramid_flow.node_text",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("PyramidFlow")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text?.length) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
