// Opens every shipped workflow as a user (prepare.py's tiny_<name>.json: the same graphs with the tiny
// models and small sizes), presses Run, and records what the frontend drew: screenshots fitted to the
// window before and after the run, the run's outcome (from /history), nodes that overlap and links that
// run behind a node, measured on the frontend's own node sizes and slot positions after it laid them out.
//   node check_workflows.mjs http://127.0.0.1:8199 DIR_WITH_TINY_WORKFLOWS OUT
import { openPage, openComfyUI, queueIdle } from "./browser.mjs";
import fs from "node:fs";
import path from "node:path";

const [server, dir, out] = process.argv.slice(2);
const { browser, page, consoleErrors, shot } = await openPage(out);
const summary = {};

await openComfyUI(page, server);
const command = (id) => page.evaluate((id) => window.app.extensionManager.command.execute(id), id);

// Geometry as drawn: node boxes (title bar included) and each link's spline sampled from the frontend's
// own slot positions; a link "behind" a node passes through a node that is neither of its ends.
const geometry = () => page.evaluate(() => {
  const T = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
  const graph = window.app.graph;
  const nodes = graph._nodes.map((n) => ({ id: n.id, title: n.title || n.type, box: [n.pos[0], n.pos[1] - T,
    n.pos[0] + n.size[0], n.pos[1] + n.size[1]] }));
  const links = [...(graph.links instanceof Map ? graph.links.values() : Object.values(graph.links ?? {}))];
  const behind = [];
  for (const l of links) {
    const src = graph.getNodeById(l.origin_id), dst = graph.getNodeById(l.target_id);
    if (!src || !dst) continue;
    const a = src.getConnectionPos(false, l.origin_slot), b = dst.getConnectionPos(true, l.target_slot);
    const d = Math.hypot(b[0] - a[0], b[1] - a[1]) * 0.25;
    const c1 = [a[0] + d, a[1]], c2 = [b[0] - d, b[1]];
    for (const n of nodes) {
      if (n.id === src.id || n.id === dst.id) continue;
      for (let k = 1; k < 64; k++) {
        const t = k / 64, u = 1 - t;
        const x = u * u * u * a[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t * t * t * b[0];
        const y = u * u * u * a[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t * t * t * b[1];
        if (x > n.box[0] && x < n.box[2] && y > n.box[1] && y < n.box[3]) {
          behind.push(`${src.title || src.type} -> ${dst.title || dst.type} behind ${n.title}`);
          break;
        }
      }
    }
  }
  const overlaps = [];
  for (const a of nodes) for (const b of nodes) {
    if (a.id >= b.id) continue;
    if (a.box[0] < b.box[2] && b.box[0] < a.box[2] && a.box[1] < b.box[3] && b.box[1] < a.box[3]) overlaps.push(`${a.title} / ${b.title}`);
  }
  const offscreen = nodes.filter((n) => n.box[0] < 0 || n.box[1] < 0).map((n) => n.title);
  return { nodes: nodes.length, behind: [...new Set(behind)], overlaps, offscreen };
});

const idle = () => queueIdle(server);

for (const file of fs.readdirSync(dir).filter((f) => /^tiny_lumix_.*\.json$/.test(f)).sort()) {
  const name = file.replace(/^tiny_/, "").replace(/\.json$/, "");
  const wf = JSON.parse(fs.readFileSync(path.join(dir, file), "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, wf);
  await page.waitForTimeout(1500);
  const before = await geometry();
  await command("Comfy.Canvas.FitView");
  await page.waitForTimeout(800);
  await shot(`${name}_1_loaded.png`);
  const historyBefore = Object.keys(await (await fetch(`${server}/history`)).json());
  // Run, as a user does: the Run button (the queue command where this frontend has no such button)
  const button = page.locator("[data-testid='queue-button']").first();
  const clicked = (await button.count()) && await button.click({ timeout: 5000 }).then(() => true, () => false);
  if (!clicked) await command("Comfy.QueuePrompt");
  const started = Date.now();
  await page.waitForTimeout(2000);
  while (Date.now() - started < 600000 && !(await idle())) await page.waitForTimeout(1500);
  await page.waitForTimeout(2000);
  const history = await (await fetch(`${server}/history`)).json();
  const fresh = Object.entries(history).filter(([id]) => !historyBefore.includes(id)).map(([, h]) => h);
  const status = fresh.map((h) => ({ status: h.status?.status_str, completed: h.status?.completed,
    error: (h.status?.messages ?? []).filter(([kind]) => kind === "execution_error").map(([, m]) => m.exception_message) }));
  const after = await geometry();
  await command("Comfy.Canvas.FitView");
  await page.waitForTimeout(800);
  await shot(`${name}_2_after_run.png`);
  const errorDialog = await page.evaluate(() => [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText).join("\n---\n"));
  if (errorDialog) { await shot(`${name}_3_dialog.png`); await page.keyboard.press("Escape"); }
  summary[name] = { runs: status, errorDialog, before, after };
  console.log(name, JSON.stringify(summary[name].runs), "behind:", after.behind.length, "overlaps:", after.overlaps.length);
}
summary.consoleErrors = consoleErrors;
fs.writeFileSync(path.join(out, "workflows.json"), JSON.stringify(summary, null, 2));
await browser.close();
