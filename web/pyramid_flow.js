// Pyramid Flow for ComfyUI: nodes that report a line of text after they run (the DiT Loader:
// which variant it chose and why) show it in a read-only box on the node. The box is there
// from the moment the node is made, so that a run fills it without making the node taller
// (a taller node would cover the one below it). The text is not a widget value: it is not
// saved in the workflow and never queued.
import { app } from "../../scripts/app.js";

const INFO = "pyramid_flow_info";
// node type -> what its box says before the first run
const REPORTS_TEXT = {
  PyramidFlowDiTLoader: "After a run: the variant it chose, and why.",
};

function infoWidget(node, placeholder) {
  let widget = node.widgets?.find((w) => w.name === INFO);
  if (widget) return widget;
  const box = document.createElement("textarea");
  box.readOnly = true;
  box.rows = 3;
  box.placeholder = placeholder ?? "";
  box.style.cssText = "width:100%;resize:none;font-size:11px;opacity:0.85;";
  widget = node.addDOMWidget(INFO, "pyramid_flow_info", box, {
    serialize: false,
    getValue: () => box.value,
    setValue: (value) => { box.value = value; },
  });
  widget.serialize = false;   // LiteGraph leaves widgets with serialize === false out of widgets_values
  return widget;
}

function showText(node, text) {
  const widget = infoWidget(node);
  widget.value = text;
  widget.element && (widget.element.value = text);
  const needed = node.computeSize()[1];
  if (node.size[1] < needed) node.setSize([node.size[0], needed]);   // only a node made without the box
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "pyramid_flow.node_text",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("PyramidFlow")) return;
    if (nodeData.name in REPORTS_TEXT) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        infoWidget(this, REPORTS_TEXT[nodeData.name]);
        return result;
      };
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text?.length) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
