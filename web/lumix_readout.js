// Shows the text a LumiX node sends to the UI (its `ui` "text": reports, numbers, warnings) in a
// read-only box inside the node. ComfyUI's frontend displays such text only for its own Preview Any
// node; every other node's text would reach the browser and stay invisible.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const WIDGET = "lumix_readout";

function readoutWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.element.readOnly = true;
    widget.element.style.fontSize = "11px";
    // Neither saved with the workflow nor sent with the prompt (it would change the node's cache key).
    widget.serialize = false;
    widget.options = { ...(widget.options ?? {}), serialize: false };
  }
  return widget;
}

app.registerExtension({
  name: "LumiX.Readout",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("LumiX")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!Array.isArray(text) || text.length === 0) return;
      const widget = readoutWidget(this);
      widget.value = text.join("\n");
      const lines = widget.value.split("\n").length;
      const wanted = this.computeSize();
      this.setSize([Math.max(this.size[0], 420, wanted[0]), Math.max(this.size[1], wanted[1] + 14 * Math.min(lines, 12))]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
