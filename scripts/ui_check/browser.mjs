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
