// The headless Chromium every check here uses: the system browser (CHROMIUM, default /usr/bin/chromium),
// never a download, with the flags this closed network needs; one 1600x1000 page, its console errors
// collected, and a screenshot helper writing PNGs into OUT.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

export async function openPage(out) {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const shot = (name) => page.screenshot({ path: path.join(out, name) });
  return { browser, page, consoleErrors, shot };
}

// Opens ComfyUI's page and waits for its app and LiteGraph, then lets the UI settle and dismisses
// first-run dialogs (Escape pressed `escapes` times).
export async function openComfyUI(page, server, { settleMs = 3000, escapes = 1 } = {}) {
  await page.goto(server, { waitUntil: "load" });
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph, null, { timeout: 120000 });
  await page.waitForTimeout(settleMs);
  for (let i = 0; i < escapes; i++) {
    await page.keyboard.press("Escape");
    if (escapes > 1) await page.waitForTimeout(500);
  }
}

// Whether the server runs and holds no prompt.
export async function queueIdle(server) {
  const q = await (await fetch(`${server}/queue`)).json();
  return q.queue_running.length === 0 && q.queue_pending.length === 0;
}

// Polls the queue every 2 s until it is idle or `timeoutMs` has passed.
export async function waitQueueIdle(page, server, timeoutMs) {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    await page.waitForTimeout(2000);
    if (await queueIdle(server)) return;
  }
}
