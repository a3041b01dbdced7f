// Drives the playground in headless Debian chromium through playwright-core (no browser
// download): creates a session, sends a message and watches the streamed reply, asks the
// echo provider for a tool call and sees it with its result, exports the session, and
// saves a screenshot. Prints one JSON object for tests/test_ts_client.py to check.
// Usage: node playground.mjs URL API_KEY SCREENSHOT_PATH

import { chromium } from "playwright-core";

const [url, apiKey, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
  ],
});
const out = { requests: [], consoleErrors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 }, acceptDownloads: true });
  page.on("request", (request) => out.requests.push(request.url()));
  await page.goto(url);
  // Without the key, listing sessions fails and the page says why.
  await page.locator("#status.error").waitFor();
  out.keylessStatus = await page.locator("#status").textContent();
  page.on("console", (message) => {
    if (message.type() === "error") out.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => out.consoleErrors.push(String(error)));
  await page.locator("#api-key").fill(apiKey);
  await page.locator("#api-key").dispatchEvent("change");
  // With the key, the list shows the session the test made, and the error is gone.
  await page.locator("#sessions li", { hasText: "Caller tools" }).waitFor();
  out.keyedStatus = await page.locator("#status").textContent();
  await page.getByRole("button", { name: "New session" }).click();
  await page.locator("#sessions li.open").waitFor();
  out.sessionTitle = await page.locator("#chat-title").textContent();

  // Count how often the model's bubble changes while the reply streams in.
  await page.evaluate(() => {
    window.bubbleChanges = 0;
    new MutationObserver((records) => {
      for (const record of records) {
        const target = record.target instanceof Element ? record.target : record.target.parentElement;
        if (target?.closest(".msg.model")) window.bubbleChanges += 1;
      }
    }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
  });
  await page.locator("#input").fill("Hello from the playground test");
  await page.locator("#input").press("Enter");
  await page.locator("#status", { hasText: "Finished" }).waitFor();
  out.replyText = await page.locator(".msg.model").last().textContent();
  out.bubbleChanges = await page.evaluate(() => window.bubbleChanges);

  await page.locator("#input").fill('/call get_current_time {"timezone": "UTC"}');
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator(".tool.result", { hasText: "get_current_time" }).waitFor();
  await page.locator("#status", { hasText: "Finished" }).waitFor();
  out.toolCall = await page.locator(".tool.call").last().textContent();
  out.toolResult = await page.locator(".tool.result").last().textContent();

  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Export" }).click(),
  ]);
  const chunks = [];
  for await (const chunk of await download.createReadStream()) chunks.push(chunk);
  out.exportName = download.suggestedFilename();
  out.exported = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  out.sessions = await page.locator("#sessions li").count();
  await page.locator("#export-panel").evaluate((panel) => {
    panel.open = false;
  });
  await page.screenshot({ path: screenshot, fullPage: true });

  // A session declaring a caller-executed function (created by the test): the turn
  // pauses for its result, which the composer sends as JSON.
  await page.locator("#sessions li", { hasText: "Caller tools" }).click();
  await page.locator("#chat-title", { hasText: "Caller tools" }).waitFor();
  await page.locator("#input").fill('/call lookup_order {"order_id": 7}');
  await page.locator("#input").press("Enter");
  await page.locator("#status", { hasText: "waits for tool results" }).waitFor();
  out.callerCall = await page.locator(".tool.call").last().textContent();
  out.placeholder = await page.locator("#input").getAttribute("placeholder");
  await page.locator("#input").fill('{"status": "shipped"}');
  await page.locator("#input").press("Enter");
  await page.locator("#status", { hasText: "Finished" }).waitFor();
  out.callerReply = await page.locator(".msg.model").last().textContent();
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
