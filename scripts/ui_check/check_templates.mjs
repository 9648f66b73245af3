// Looks at the pack's templates as a new user meets them, in headless Chromium (scripts/ui_check/README.md):
// Workflow -> Browse Templates -> this pack's section (cards and thumbnails), then each card opened by a
// click: the missing-models dialog it raises on a server without the FLUX files, and the canvas fitted to
// the window (plus a scale-1 view of each quarter, to read the Notes).
//   node check_templates.mjs http://127.0.0.1:8197 OUT
import { openPage, openComfyUI } from "./browser.mjs";
import fs from "node:fs";
import path from "node:path";

const [server, out] = process.argv.slice(2);
const { browser, page, consoleErrors, shot } = await openPage(out);
const summary = { templates: {} };

await openComfyUI(page, server);
const command = (id) => page.evaluate((id) => window.app.extensionManager.command.execute(id), id);

async function openPackSection() {
  await command("Comfy.BrowseTemplates");
  await page.waitForTimeout(2000);
  const entry = page.getByText(/comfyui-lumix/i).first();
  await entry.click();
  await page.waitForTimeout(2500);
}
await openPackSection();
await shot("10_template_browser_pack.png");
summary.cardTitles = await page.evaluate(() => [...document.querySelectorAll("[data-testid^='template-workflow-']")]
  .map((e) => e.getAttribute("data-testid")));
summary.thumbnails = await page.evaluate(() => [...document.querySelectorAll(".p-dialog img")]
  .map((img) => ({ src: img.getAttribute("src"), loaded: img.complete && img.naturalWidth > 0 })));

const names = (await (await fetch(`${server}/api/workflow_templates`)).json())["comfyui-lumix"];
summary.served = names;
for (const [i, name] of names.entries()) {
  if (i > 0) await openPackSection();
  const card = page.locator(`[data-testid='template-workflow-${name}']`).first();
  const viaCard = (await card.count()) > 0;
  if (viaCard) await card.click();
  else await page.evaluate(async ([server, name]) => {
    const wf = await (await fetch(`${server}/api/workflow_templates/comfyui-lumix/${name}.json`)).json();
    await window.app.loadGraphData(wf, true, true, name);
  }, [server, name]);
  await page.waitForTimeout(3000);
  const dialogText = await page.evaluate(() => [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText).join("\n---\n"));
  await shot(`2${i}_${name}_on_open.png`);
  await page.keyboard.press("Escape");
  await page.waitForTimeout(500);
  await page.evaluate(() => { for (const b of document.querySelectorAll(".p-dialog-close-button")) b.click(); });
  await page.waitForTimeout(500);
  await command("Comfy.Canvas.FitView");
  await page.waitForTimeout(1000);
  await shot(`3${i}_${name}_canvas.png`);
  const nodes = await page.evaluate(() => window.app.graph._nodes.map((n) => ({
    id: n.id, type: n.type, title: n.title, pos: [...n.pos], size: [...n.size] })));
  // Overlaps as drawn (title bar included), after the frontend computed each node's real size.
  const overlaps = [];
  const T = 30;
  for (const a of nodes) for (const b of nodes) {
    if (a.id >= b.id) continue;
    const ax0 = a.pos[0], ay0 = a.pos[1] - T, ax1 = a.pos[0] + a.size[0], ay1 = a.pos[1] + a.size[1];
    const bx0 = b.pos[0], by0 = b.pos[1] - T, bx1 = b.pos[0] + b.size[0], by1 = b.pos[1] + b.size[1];
    if (ax0 < bx1 && bx0 < ax1 && ay0 < by1 && by0 < ay1) overlaps.push([a.title || a.type, b.title || b.type]);
  }
  // Quarters at scale 1 so the Notes can be read.
  const bounds = nodes.reduce((r, n) => [Math.min(r[0], n.pos[0]), Math.min(r[1], n.pos[1] - T),
    Math.max(r[2], n.pos[0] + n.size[0]), Math.max(r[3], n.pos[1] + n.size[1])], [1e9, 1e9, -1e9, -1e9]);
  let k = 0;
  for (let y = bounds[1] - 20; y < bounds[3]; y += 950) for (let x = bounds[0] - 20; x < bounds[2]; x += 1550) {
    await page.evaluate(([x, y]) => { const ds = window.app.canvas.ds; ds.scale = 1; ds.offset[0] = -x; ds.offset[1] = -y;
      window.app.canvas.setDirty(true, true); }, [x, y]);
    await page.waitForTimeout(500);
    await shot(`4${i}_${name}_part${k++}.png`);
  }
  summary.templates[name] = { viaCard, dialogText, nodes: nodes.length, overlaps, bounds };
}
summary.consoleErrors = consoleErrors;
fs.writeFileSync(path.join(out, "templates.json"), JSON.stringify(summary, null, 2));
console.log(JSON.stringify(summary, null, 2));
await browser.close();
