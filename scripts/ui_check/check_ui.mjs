// Looks at the LumiX nodes as a user sees them, in headless Chromium (see scripts/ui_check/README.md):
// the node menu's LumiX sub-menus, the loader's checkpoint list, and the tool nodes' readouts after
// running the tools workflow with tiny models. Writes PNG screenshots and a JSON summary to OUT.
//   node check_ui.mjs http://127.0.0.1:8199 tiny_tools_workflow.json OUT
// Needs playwright-core (npm) and a system Chromium (CHROMIUM, default /usr/bin/chromium); it never
// downloads a browser.
import { openPage, openComfyUI, waitQueueIdle } from "./browser.mjs";
import fs from "node:fs";
import path from "node:path";

const [server, workflowPath, out] = process.argv.slice(2);
const { browser, page, consoleErrors, shot } = await openPage(out);
const summary = {};

await openComfyUI(page, server);  // Escape: a first-run dialog, if any
summary.readoutExtensionLoaded = await page.evaluate(
  () => window.app.extensions.some((e) => e.name === "LumiX.Readout"));

// 1. The node menu: right-click the empty canvas -> Add Node -> LumiX -> each sub-menu
const lastMenuEntries = () => page.evaluate(() => {
  const menus = [...document.querySelectorAll(".litecontextmenu")];
  return menus.length ? [...menus.at(-1).querySelectorAll(".litemenu-entry")].map((e) => e.textContent.trim()) : [];
});
async function openMenu(...entries) {
  await page.evaluate(() => window.LiteGraph.closeAllContextMenus?.());
  await page.waitForTimeout(300);
  await page.mouse.click(800, 500, { button: "right" });
  for (const entry of ["Add Node", ...entries]) {
    await page.locator(".litecontextmenu").last().locator(".litemenu-entry", { hasText: new RegExp(`^${entry}$`) }).first().click();
    await page.waitForTimeout(400);
  }
  return lastMenuEntries();
}
await page.evaluate(() => window.app.graph.clear());
await page.waitForTimeout(500);
summary.lumixSubmenu = await openMenu("LumiX");
await shot("01_node_menu_lumix.png");
for (const sub of summary.lumixSubmenu) {
  summary[`menu_${sub}`] = await openMenu("LumiX", sub);
  await shot(`02_node_menu_lumix_${sub}.png`);
}
await page.evaluate(() => window.LiteGraph.closeAllContextMenus?.());

// 2. The tools workflow with tiny models: run it and wait for the queue to empty
const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
await page.waitForTimeout(1000);
await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
await waitQueueIdle(page, server, 300000);
await page.waitForTimeout(1500);

// Centre the canvas on a node at scale 1 and screenshot it.
async function focus(nodeType, name, margin = [60, 60]) {
  const found = await page.evaluate(([type, margin]) => {
    const node = window.app.graph._nodes.find((n) => n.type === type);
    if (!node) return null;
    const ds = window.app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = -node.pos[0] + margin[0];
    ds.offset[1] = -node.pos[1] + margin[1];
    window.app.canvas.setDirty(true, true);
    const readout = node.widgets?.find((w) => w.name === "lumix_readout");
    return { id: node.id, size: [...node.size], readout: readout ? readout.value : null };
  }, [nodeType, margin]);
  await page.waitForTimeout(600);
  await shot(name);
  return found;
}
summary.consistency = await focus("LumiXConsistency", "03_consistency_report.png");
summary.relight = await focus("LumiXRelight", "04_relight_readout.png");
summary.depth = await focus("LumiXDepthColormap", "05_depth_colormap_readout.png");
summary.sampler = await focus("LumiXSampler", "06_sampler.png");

// The readout box is neither saved with the workflow nor sent with the prompt.
summary.readoutLeftOut = await page.evaluate(async () => {
  const saved = window.app.graph.serialize().nodes.find((n) => n.type === "LumiXConsistency").widgets_values;
  const prompt = (await window.app.graphToPrompt()).output;
  const sent = Object.values(prompt).find((n) => n.class_type === "LumiXConsistency").inputs;
  return { savedWidgetValues: saved, sentInputs: Object.keys(sent) };
});

// 3. The loader's checkpoint list: click its lumix_name widget
const loader = await focus("LumiXTensorLoRALoader", "07_loader.png", [300, 200]);
const widgetY = await page.evaluate(() => {
  const node = window.app.graph._nodes.find((n) => n.type === "LumiXTensorLoRALoader");
  const w = node.widgets.find((x) => x.name === "lumix_name");
  return w.y ?? w.last_y;
});
const box = await page.locator("canvas#graph-canvas").boundingBox();
await page.mouse.click(box.x + 300 + loader.size[0] / 2, box.y + 200 + widgetY + 10);
await page.waitForTimeout(600);
summary.loaderList = await page.evaluate(() => {
  const menus = [...document.querySelectorAll(".litecontextmenu")];
  return menus.length ? [...menus.at(-1).querySelectorAll(".litemenu-entry")].map((e) => e.textContent.trim()) : null;
});
await shot("08_loader_list.png");

summary.consoleErrors = consoleErrors;
fs.writeFileSync(path.join(out, "summary.json"), JSON.stringify(summary, null, 2));
console.log(JSON.stringify(summary, null, 2));
await browser.close();
