// Drives the web console in Debian's headless Chromium: log in, find a
// queue with its depth on the queues page, open it, purge it, and save
// screenshots. Usage: node console.mjs BASE_URL QUEUE DEPTH ARTIFACTS_DIR
import { chromium } from "playwright-core";

const [base, queue, depth, artifacts] = process.argv.slice(2);
const WAIT = 20000;

async function waitFor(what, promise) {
  try {
    return await promise;
  } catch (err) {
    throw new Error(`timed out waiting for ${what}: ${err.message}`);
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  await page.goto(base + "/");
  await waitFor("the login form", page.waitForSelector("#login:not([hidden])"));
  await page.fill("#login-user", "guest");
  await page.fill("#login-password", "guest");
  await page.click("#login-submit");
  await waitFor("the overview's live rates", page.waitForSelector("#rate-publish"));
  await waitFor("the overview to count the queue",
    page.waitForFunction(() => Number(document.querySelector("#total-queues b")?.textContent) >= 1));
  await page.screenshot({ path: `${artifacts}/console-overview.png`, fullPage: true });

  await page.click('nav a[href="#/queues"]');
  const readyCell = `tr[data-queue="${queue}"] td.ready`;
  await waitFor(`queue ${queue} with ${depth} ready messages`,
    page.waitForFunction(([sel, d]) => document.querySelector(sel)?.textContent === d, [readyCell, depth]));
  await page.screenshot({ path: `${artifacts}/console-queues.png`, fullPage: true });

  await page.click(`tr[data-queue="${queue}"] a`);
  await waitFor("the queue page's depth",
    page.waitForFunction((d) => document.querySelector("#queue-ready")?.textContent === d, depth));
  await page.click("#purge");
  await waitFor("the purge to show an empty queue",
    page.waitForFunction(() => document.querySelector("#queue-ready")?.textContent === "0"));
  await waitFor("the purge confirmation",
    page.waitForFunction(() => document.querySelector("#queue-result")?.textContent === "Purged."));
  await page.screenshot({ path: `${artifacts}/console-queue-purged.png`, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
