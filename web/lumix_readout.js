// Shows the text a LumiX node sends to the UI (its `ui` "text": reports, numbers, warnings) in a
// read-only box inside the node, sized to its content. ComfyUI's frontend displays such text only for
// its own Preview Any node; every other node's text would reach the browser and stay invisible.
// Also clears, at the start of every run, the text the sampler put on a LumiX node during an earlier run
// (e.g. "model not patched ... will NOT be aligned"): the frontend keeps such text until replaced.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const WIDGET = "lumix_readout";
// The frontend's widget for a node's progress text (server.send_progress_text), in 1.27 and 1.35.
const PROGRESS_TEXT_WIDGET = "$$node-text-preview";
// 11px monospace text: about 6.6-7 px a character (counted as 7.2: wrapping at a word boundary loses some),
// 13 px a line; up to MAX_LINES lines shown, more scroll.
const CHAR_WIDTH = 7.2, LINE_HEIGHT = 13, MAX_LINES = 16, PADDING = 16;

function readoutWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.element.readOnly = true;
    widget.element.style.fontSize = "11px";
    widget.element.style.lineHeight = `${LINE_HEIGHT}px`;
    widget.element.style.whiteSpace = "pre-wrap";
    // Neither saved with the workflow nor sent with the prompt (it would change the node's cache key).
    widget.serialize = false;
    widget.options = { ...(widget.options ?? {}), serialize: false };
  }
  return widget;
}

// The box's height for its text (wrapped at the node's width), through whichever sizing hooks this
// frontend's DOM widgets read (options.getMinHeight/getMaxHeight, computeLayoutSize).
function fitBox(node, widget) {
  const perLine = Math.max(20, Math.floor((node.size[0] - 24) / CHAR_WIDTH));
  const wrapped = widget.value.split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0);
  const height = Math.min(Math.max(wrapped, 1), MAX_LINES) * LINE_HEIGHT + PADDING;
  widget.options.getMinHeight = () => height;
  widget.options.getMaxHeight = () => height;
  widget.options.getHeight = () => height;
  widget.computeLayoutSize = () => ({ minHeight: height, maxHeight: height, minWidth: 0 });
  if (widget.element) widget.element.style.height = `${height}px`;
  // Never narrower (neighbours sit beside a node); as tall as the widgets need, the box included (never
  // shorter than it was where the node also shows images, which computeSize leaves out).
  const needed = node.computeSize()[1];
  node.setSize([node.size[0], node.imgs?.length ? Math.max(needed, node.size[1]) : needed]);
  node.setDirtyCanvas?.(true, true);
}

function clearProgressText(node) {
  const index = node.widgets?.findIndex((w) => w.name === PROGRESS_TEXT_WIDGET) ?? -1;
  if (index < 0) return;
  node.widgets[index].onRemove?.();
  node.widgets.splice(index, 1);
  node.setDirtyCanvas?.(true, true);
}

function lumixNodes(graph) {
  const nodes = graph?._nodes ?? graph?.nodes ?? [];
  return nodes.filter((n) => typeof n.type === "string" && n.type.startsWith("LumiX"));
}

app.registerExtension({
  name: "LumiX.Readout",
  async setup() {
    // Every run starts from a clean sampler: a warning of an earlier run must not outlive the fix.
    api.addEventListener("execution_start", () => lumixNodes(app.graph).forEach(clearProgressText));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("LumiX")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = typeof message?.text === "string" ? [message.text] : message?.text;
      if (!Array.isArray(text) || text.length === 0) return;
      const widget = readoutWidget(this);
      widget.value = text.join("\n");
      fitBox(this, widget);
    };
  },
});
