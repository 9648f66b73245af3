// Shows the text a LumiX node sends to the UI (its `ui` "text": reports, numbers, warnings) in a
// read-only box inside the node. ComfyUI's frontend displays such text only for its own Preview Any
// node; every other node's text would reach the browser and stay invisible.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const WIDGET = "lumix_readout";
// 11px monospace text: about 6.6 px a character, 13 px a line; the frontend's text box is at least ~60 px.
const CHAR_WIDTH = 6.6, LINE_HEIGHT = 13, MAX_LINES = 10, MIN_BOX = 60;

function readoutWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.element.readOnly = true;
    widget.element.style.fontSize = "11px";
    widget.element.style.lineHeight = `${LINE_HEIGHT}px`;
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
      const text = typeof message?.text === "string" ? [message.text] : message?.text;
      if (!Array.isArray(text) || text.length === 0) return;
      const widget = readoutWidget(this);
      widget.value = text.join("\n");
      // Grow downwards to show up to MAX_LINES wrapped lines (the box scrolls for more), never wider:
      // workflows place neighbours beside a node, and room for the readout below it.
      const perLine = Math.max(20, Math.floor((this.size[0] - 24) / CHAR_WIDTH));
      const wrapped = widget.value.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0);
      const wanted = Math.min(wrapped, MAX_LINES) * LINE_HEIGHT + 10;
      this.setSize([this.size[0], Math.max(this.size[1], this.computeSize()[1] + Math.max(0, wanted - MIN_BOX))]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
