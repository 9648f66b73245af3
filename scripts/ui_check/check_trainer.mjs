// Loads the tiny training workflow (prepare.py), gives the trainer a fresh output_name (ComfyUI would
// otherwise return its cached result), presses Run, then screenshots the LumiX Trainer at 90%: its widgets,
// and after the run the last validation grid and the report under them; trainer.json lists the widgets
// and what the node sent to the browser.
import fs from "node:fs";
import { openPage, openComfyUI, waitQueueIdle } from "./browser.mjs";
const [server, wfPath, out] = process.argv.slice(2);
const { browser, page, consoleErrors, shot } = await openPage(out);
await openComfyUI(page, server);
const wf = JSON.parse(fs.readFileSync(wfPath, "utf8"));
await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, wf);
await page.waitForTimeout(1500);
const focus = async (name) => {
  await page.evaluate(() => {
    const node = window.app.graph._nodes.find((n) => n.type === "LumiXTrainer");
    const ds = window.app.canvas.ds;
    ds.scale = 0.9;
    ds.offset[0] = -node.pos[0] + 60; ds.offset[1] = -node.pos[1] + 60;
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(800);
  await shot(name);
};
const widgets = await page.evaluate(() => window.app.graph._nodes.find((n) => n.type === "LumiXTrainer").widgets.map((w) => [w.name, w.value]));
await page.evaluate((name) => { const n = window.app.graph._nodes.find((n) => n.type === "LumiXTrainer");
  n.widgets.find((w) => w.name === "output_name").value = name; }, `ui_zoom_${Date.now()}`);
await focus("trainer_loaded.png");
await page.locator("[data-testid='queue-button']").first().click();
await waitQueueIdle(page, server, 600000);
await page.waitForTimeout(2000);
await focus("trainer_after_run.png");
await page.evaluate(() => { window.app.canvas.ds.offset[1] -= 700; window.app.canvas.setDirty(true, true); });
await page.waitForTimeout(800);
await shot("trainer_after_run_lower.png");
const after = await page.evaluate(() => { const n = window.app.graph._nodes.find((n) => n.type === "LumiXTrainer");
  return { size: n.size, widgets: n.widgets.map((w) => w.name), imgs: (n.imgs || []).length,
           outputs: window.app.nodeOutputs ? Object.keys(window.app.nodeOutputs) : null,
           mine: window.app.nodeOutputs ? window.app.nodeOutputs[String(n.id)] : null }; });
fs.writeFileSync(`${out}/trainer.json`, JSON.stringify({ widgets, after, consoleErrors }, null, 1));
await browser.close();
