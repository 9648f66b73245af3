// The LumiX Intrinsic Sampler's live preview and its warnings as a user sees them (scripts/ui_check/README.md):
// runs prepare.py's tiny tools workflow with more steps and a larger size, screenshots the sampler node
// while it samples (the preview should tile the five maps), then runs it again with the LumiX loader
// bypassed (an unpatched model) and screenshots the warning on the sampler node.
// Start the server with --preview-method latent2rgb (or TAESD) so previews are drawn on the CPU.
//   node check_preview.mjs http://127.0.0.1:8197 tiny_tools_workflow.json OUT [steps] [size]
import { openPage, openComfyUI, queueIdle } from "./browser.mjs";
import fs from "node:fs";
import path from "node:path";

const [server, workflowPath, out, steps = "40", size = "256"] = process.argv.slice(2);
const { browser, page, shot } = await openPage(out);
const summary = { midRun: [] };

await openComfyUI(page, server);

const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
for (const node of workflow.nodes) {
  if (node.type === "LumiXSampler") {
    node.widgets_values[2] = Number(steps);
    node.widgets_values[6] = node.widgets_values[7] = Number(size);
  }
}
const idle = () => queueIdle(server);
async function focusSampler() {
  await page.evaluate(() => {
    const node = window.app.graph._nodes.find((n) => n.type === "LumiXSampler");
    const ds = window.app.canvas.ds;
    ds.scale = 1; ds.offset[0] = -node.pos[0] + 60; ds.offset[1] = -node.pos[1] + 60;
    window.app.canvas.setDirty(true, true);
  });
}
async function run(tag, everyMs, reload = true) {
  if (reload) {
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
    await page.waitForTimeout(1000);
  }
  await focusSampler();
  await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
  const started = Date.now();
  let k = 0;
  while (Date.now() - started < 300000) {
    await page.waitForTimeout(everyMs);
    const state = await page.evaluate(() => {
      const node = window.app.graph._nodes.find((n) => n.type === "LumiXSampler");
      const img = node.imgs?.[0];
      const bar = document.querySelector(".comfy-menu-queue-size, [data-testid='queue-button']")?.innerText;
      return { progress: window.app.canvas.graph?._nodes && node.progress, running: window.app.runningNodeId ?? null,
               preview: img ? [img.naturalWidth, img.naturalHeight] : null };
    });
    if (everyMs && !(await idle()) && k < 6) {
      await shot(`${tag}_midrun_${k}.png`);
      summary.midRun.push({ tag, k, ...state });
      k++;
    }
    if (await idle()) break;
  }
  await page.waitForTimeout(1500);
  await focusSampler();
  await page.waitForTimeout(500);
  await shot(`${tag}_done.png`);
}
await run("51_preview", 700);

// The same run with the LumiX loader bypassed: the model reaching the sampler is not patched.
for (const node of workflow.nodes) if (node.type === "LumiXTensorLoRALoader") node.mode = 4;
for (const node of workflow.nodes) if (node.type === "LumiXSampler") node.widgets_values[2] = 2;
await run("52_unpatched", 0);
const samplerText = () => page.evaluate(() => {
  const node = window.app.graph._nodes.find((n) => n.type === "LumiXSampler");
  return (node.widgets ?? []).filter((w) => typeof w.value === "string" && /patch|align/i.test(w.value))
    .map((w) => ({ name: w.name, value: w.value }));
});
summary.samplerTextAfterUnpatched = await samplerText();
// The loader turned back on in the same graph (no reload) and run again: the warning must be gone.
await page.evaluate(() => {
  for (const n of window.app.graph._nodes) if (n.type === "LumiXTensorLoRALoader") n.mode = 0;
});
await run("53_patched_again", 0, false);
summary.samplerTextAfterPatchedAgain = await samplerText();
fs.writeFileSync(path.join(out, "preview.json"), JSON.stringify(summary, null, 2));
console.log(JSON.stringify(summary, null, 2));
await browser.close();
