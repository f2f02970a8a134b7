// Opens the real server's debug pages in Debian's Chromium (headless) and reports what a
// person would see, as JSON on stdout, for tests/suite/debug_pages.rs to assert on:
//   node check_debug_pages.mjs BASE_URL TRACE_ID SCREENSHOT.png
// Every console error, uncaught page error, failed request and HTTP error is reported.
import { chromium } from "playwright-core";

const [base, traceId, screenshot] = process.argv.slice(2);
if (!base || !traceId || !screenshot) {
  console.error("usage: check_debug_pages.mjs BASE_URL TRACE_ID SCREENSHOT.png");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.JISU_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const report = { consoleErrors: [], listed: false, traceRows: [], storeBar: null, rpcz: null };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") report.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => report.consoleErrors.push("page error: " + e.message));
  page.on("requestfailed", (r) => report.consoleErrors.push("request failed: " + r.url()));
  page.on("response", (r) => {
    if (r.status() >= 400) report.consoleErrors.push(`HTTP ${r.status()}: ${r.url()}`);
  });

  // The list: the failed call is there, with a link to its trace.
  await page.goto(base + "/debug/traces");
  await page.waitForSelector("body[data-loaded=true]", { timeout: 15000 });
  const row = page.locator(`#failures tr[data-trace-id="${traceId}"]`);
  report.listed = (await row.count()) === 1;
  if (report.listed) {
    report.listedCode = await row.locator("td").nth(3).textContent();
    // A person clicks the trace id and gets its timeline.
    await row.locator("a").click();
    await page.waitForURL(/\?trace=/);
    await page.waitForSelector("body[data-loaded=true]", { timeout: 15000 });
    await page.waitForSelector("#calls tr.span", { timeout: 15000 });
    report.traceRows = await page.locator("#calls tr.span").evaluateAll((rows) =>
      rows.map((r) => ({ name: r.dataset.spanName, kind: r.dataset.kind, status: r.cells[2].textContent })));
    const bar = page.locator('#calls tr.span[data-kind="internal"] .span-bar').first();
    if ((await bar.count()) === 1) {
      const box = await bar.boundingBox();
      report.storeBar = box && { width: box.width, height: box.height };
    }
    await page.screenshot({ path: screenshot, fullPage: true });
  }

  // rpcz: the method's row counts the error by code.
  await page.goto(base + "/debug/rpcz");
  await page.waitForSelector("body[data-loaded=true]", { timeout: 15000 });
  report.rpcz = await page.locator("#methods tbody tr").evaluateAll((rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent)));
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
