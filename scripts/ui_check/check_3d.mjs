// Render passes -> LumiX maps -> Depth to Mesh -> core Preview 3D in headless Chromium, then the shipped 3D
// workflow as a user opens it (see scripts/ui_check/README.md). Needs prepare_3d.py's input files.
//   node check_3d.mjs http://127.0.0.1:8199 OUT [path/to/workflows/lumix_from_3d_render_passes.json]
import { openPage, openComfyUI, waitQueueIdle } from "./browser.mjs";
import fs from "node:fs";
const [server, out] = process.argv.slice(2);
const { browser, page, consoleErrors, shot } = await openPage(out);
const summary = {failed: []};
page.on("response", (r) => { if (r.status() >= 400) summary.failed.push(`${r.status()} ${r.url()}`); });
await openComfyUI(page, server, { settleMs: 8000, escapes: 3 });
const api = {
  "1": {class_type: "LumiXRenderPassesToMaps", inputs: {depth_file: "render_passes.exr", normal_file: "render_passes.exr",
        depth_encoding: "planar Z (scene units)", depth_range: "image's nearest..farthest", near: 0.1, far: 100.0,
        normal_space: "world (camera rotation below)",
        normal_values: "auto",
        camera_rot_x: 75.0, camera_rot_y: 0.0, camera_rot_z: 0.0, fov_degrees: 60.0}},
  "2": {class_type: "LoadImage", inputs: {image: "albedo_standin.png"}},
  "3": {class_type: "LumiXDepthToMesh", inputs: {depth: ["1", 0], normal: ["1", 1], albedo: ["2", 0], fov_degrees: 60.0,
        depth_scale: "fit to the normals", near: 1.0, far: 3.0, discontinuity: 0.05, max_side: 512,
        filename_prefix: "LumiX/mesh"}},
  "4": {class_type: "Preview3D", inputs: {model_file: ["3", 0]}},
};
await page.evaluate(async (a) => { await window.app.loadApiJson(a, "threed_check"); }, api);
await page.waitForTimeout(1500);
await page.evaluate(() => {
  const g = window.app.graph; const byType = (t) => g._nodes.find((n) => n.type === t);
  byType("LumiXRenderPassesToMaps").pos = [0, 0]; byType("LoadImage").pos = [0, 700];
  byType("LumiXDepthToMesh").pos = [450, 0]; const p = byType("Preview3D"); p.pos = [850, 0]; p.size = [600, 600];
  window.app.canvas.ds.offset = [20, 40]; window.app.canvas.ds.scale = 1.0; window.app.canvas.setDirty(true, true);
});
await shot("01_loaded.png");
await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
await waitQueueIdle(page, server, 180000);
await page.waitForTimeout(6000);
for (let i = 0; i < 2; i++) { await page.keyboard.press("Escape"); await page.waitForTimeout(300); }
await page.evaluate(() => { window.app.canvas.ds.offset = [20, 40]; window.app.canvas.ds.scale = 1.0; window.app.canvas.setDirty(true, true); });
await page.waitForTimeout(1500);
await shot("02_after_run.png");
summary.history = await (await fetch(`${server}/history`)).json();
summary.previewWidget = await page.evaluate(() => {
  const p = window.app.graph._nodes.find((n) => n.type === "Preview3D");
  return p.widgets?.map((w) => [w.name, typeof w.value === "string" ? w.value : null]);
});
// the shipped 3D workflow as a user opens it
const wf = JSON.parse(fs.readFileSync(process.argv[4] ?? new URL("../../workflows/lumix_from_3d_render_passes.json", import.meta.url), "utf8"));
await page.evaluate(async (w) => { await window.app.loadGraphData(w); }, wf);
await page.waitForTimeout(2500);
await page.keyboard.press("Escape");
await page.waitForTimeout(500);
for (const [name, x, y, scale] of [["03_workflow_left.png", 400, 0, 0.8], ["04_workflow_right.png", -1100, 0, 0.8]]) {
  await page.evaluate(([x, y, s]) => { window.app.canvas.ds.offset = [x, y]; window.app.canvas.ds.scale = s; window.app.canvas.setDirty(true, true); }, [x, y, scale]);
  await page.waitForTimeout(700);
  await shot(name);
}
summary.consoleErrors = consoleErrors;
fs.writeFileSync(`${out}/summary.json`, JSON.stringify(summary, null, 2));
await browser.close();
