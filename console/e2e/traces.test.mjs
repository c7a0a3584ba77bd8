// Browser test of the console's Traces and Topology pages: headless Chromium (Debian's
// /usr/bin/chromium) driven by playwright-core against the real `quiver-control demo`. Run by
// controlplane/tests/console_traces.rs, which starts the demo, asks the API for the ground
// truth and passes, by environment:
//   QUIVER_URL, QUIVER_ADMIN_TOKEN,
//   TRACE_ID     a complete frontend -> catalog -> ratings trace the API returned,
//   TRACE_SPANS  its spans as JSON: [{spanId, parentSpanId, depth, service, kind, peerService,
//                peerIdentity}] (depth from the parent links),
//   CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (optional: write docs screenshots).
import assert from "node:assert/strict";
import { Run, need as needs, waitValue } from "./harness.mjs";

const need = (name) => needs("traces.test.mjs", name);
const url = need("QUIVER_URL");
const adminToken = need("QUIVER_ADMIN_TOKEN");
const traceId = need("TRACE_ID");
const expected = JSON.parse(need("TRACE_SPANS"));
const shots = process.env.SCREENSHOT_DIR;

const run = await Run.start("traces");
const step = (name, fn) => run.step(name, fn);

/// The waterfall as the page shows it, top to bottom.
async function waterfallRows(page) {
  return page.locator("ol.spans > li").evaluateAll((lis) => lis.map((li) => ({
    spanId: li.dataset.spanId,
    parentSpanId: li.dataset.parentId,
    depth: Number(li.dataset.depth),
    service: li.dataset.service,
    kind: li.dataset.kind,
    indent: parseFloat(li.querySelector(".span-label").style.paddingLeft),
  })));
}

/// Every row's parent is shown above it, one level shallower (roots have none).
function assertTree(rows) {
  const seen = new Map();
  for (const r of rows) {
    if (r.parentSpanId && seen.has(r.parentSpanId)) {
      assert.equal(r.depth, seen.get(r.parentSpanId).depth + 1, `depth of ${r.spanId}`);
      assert.ok(r.indent > seen.get(r.parentSpanId).indent, `${r.spanId} is indented under its parent`);
    } else {
      assert.equal(r.depth, 0, `${r.spanId} has no parent above it, so it is a root`);
    }
    seen.set(r.spanId, r);
  }
}

try {
  let page;
  await step("sign in and open Traces from the navigation", async () => {
    page = await run.session(url, adminToken, "admin");
    await page.getByRole("navigation").getByRole("link", { name: "Traces" }).click();
    await page.getByRole("heading", { name: "Traces" }).waitFor();
    await page.getByText("Choose filters and press Search.").waitFor();
  });

  await step("bad input is refused next to the field it is about", async () => {
    await page.getByLabel("Minimum duration").fill("fast");
    await page.getByLabel("Limit", { exact: true }).fill("500");
    await page.getByRole("button", { name: "Search" }).click();
    await page.locator('[data-field="min-duration"]').getByText('Minimum duration "fast" is not a duration').waitFor();
    await page.locator('[data-field="limit"]').getByText("from 1 to 200").waitFor();
    await page.getByLabel("Time range").selectOption("custom");
    await page.getByRole("button", { name: "Search" }).click();
    await page.locator('[data-field="start"]').getByText("needs a start time").waitFor();
    assert.equal(await page.locator("table.traces").count(), 0, "nothing was searched");
    await page.getByLabel("Time range").selectOption("15m");
    await page.getByLabel("Minimum duration").fill("250 ms"); // a space is not a unit either
    await page.getByLabel("Limit", { exact: true }).fill("200");
    await page.getByRole("button", { name: "Search" }).click();
    await page.locator('[data-field="min-duration"]').waitFor();
    assert.equal(await page.locator('[data-field="limit"]').count(), 0, "limit 200 is fine");
    await page.getByLabel("Minimum duration").fill("");
  });

  await step("search catalog's traces: the list shows the trace the API returned", async () => {
    await page.getByLabel("Service", { exact: true }).selectOption("demo/catalog");
    await page.getByRole("button", { name: "Search" }).click();
    const row = page.locator(`tr.trace-row[data-trace-id="${traceId}"]`);
    await row.waitFor();
    assert.equal(await page.locator('[data-field]').count(), 0, "no field errors left");
    const rows = await page.locator("tr.trace-row").evaluateAll((trs) => trs.map((tr) => ({
      services: tr.children[4].innerText, width: parseFloat(tr.querySelector(".durbar span").style.width),
    })));
    assert.ok(rows.length >= 1 && rows.length <= 200, `${rows.length} results`);
    for (const r of rows) assert.match(r.services, /catalog/, "every result has a catalog span");
    // Bars are scaled to the longest result: exactly one (or a tie) is full width.
    assert.equal(Math.max(...rows.map((r) => r.width)), 100);
    assert.equal(await row.getAttribute("data-span-count"), String(expected.length));
    assert.match(await row.innerText(), /frontend/);
    assert.match(await row.locator("code").innerText(), new RegExp(`^${traceId.slice(0, 8)}$`));
    if (shots) await page.screenshot({ path: `${shots}/console-traces.png` });
    await row.locator("td").nth(1).click();
    await page.waitForURL(`**/traces/${traceId}`);
  });

  await step(`the waterfall has the trace's ${expected.length} spans in their tree`, async () => {
    await page.locator("ol.spans > li").first().waitFor();
    const rows = await waterfallRows(page);
    assert.equal(rows.length, expected.length, JSON.stringify(rows));
    assertTree(rows);
    // The same spans, parents and depths as GetTrace says; one demo request is a chain:
    // frontend out -> catalog in -> catalog out -> ratings in.
    const byId = new Map(expected.map((s) => [s.spanId, s]));
    for (const r of rows) {
      const want = byId.get(r.spanId);
      assert.ok(want, `span ${r.spanId} is in the trace`);
      assert.deepEqual([r.parentSpanId, r.depth, r.service, r.kind], [want.parentSpanId, want.depth, want.service, want.kind]);
    }
    assert.deepEqual(rows.map((r) => `${r.service}:${r.kind}`),
      ["frontend:CLIENT", "catalog:SERVER", "catalog:CLIENT", "ratings:SERVER"]);
    assert.equal(await page.locator("[data-spans]").innerText(), String(expected.length));
    // Bars: each child starts no earlier than its parent, all within the track.
    const bars = await page.locator("ol.spans .span-bar").evaluateAll((bs) => bs.map((b) => ({
      left: parseFloat(b.style.left), width: parseFloat(b.style.width),
    })));
    for (let i = 1; i < bars.length; i++) assert.ok(bars[i].left >= bars[i - 1].left - 0.001, JSON.stringify(bars));
    for (const b of bars) assert.ok(b.left >= 0 && b.left + b.width <= 100.5, JSON.stringify(b));
    assert.ok(bars[0].left === 0 && bars[0].width > 50, "the root starts the trace and covers most of it");
  });

  await step("clicking a span shows its details; its parent link selects the parent", async () => {
    const ratings = expected.find((s) => s.service === "ratings");
    await page.locator(`ol.spans > li[data-span-id="${ratings.spanId}"] button`).click();
    const details = page.locator(`article.span-details[data-span-id="${ratings.spanId}"]`);
    await details.waitFor();
    const detail = (k) => details.locator(`[data-detail="${k}"]`).innerText();
    assert.match(await detail("kind"), /^SERVER/);
    assert.equal(await detail("service"), "demo/ratings");
    assert.equal(await detail("peer-service"), "catalog");
    assert.equal(await detail("peer-identity"), ratings.peerIdentity);
    assert.equal(ratings.peerIdentity, "spiffe://mesh.local/ns/demo/sa/catalog");
    const dash = (v) => (v === "" ? "—" : String(v));
    assert.equal(await detail("status"), String(ratings.statusCode));
    assert.equal(await detail("error"), dash(ratings.error));
    assert.equal(await detail("attempt"), String(ratings.attempt));
    assert.equal(await detail("quic-connection"), dash(ratings.quicConnectionId));
    assert.match(await detail("duration"), /(µs|ms|s)$/);
    assert.equal(await detail("span-id"), ratings.spanId);
    await details.locator('[data-detail="parent-span-id"] button').click();
    await page.locator(`article.span-details[data-span-id="${ratings.parentSpanId}"]`).waitFor();
    const client = page.locator(`article.span-details[data-span-id="${ratings.parentSpanId}"]`);
    assert.match(await client.locator('[data-detail="kind"]').innerText(), /^CLIENT/);
    const parent = expected.find((s) => s.spanId === ratings.parentSpanId);
    assert.equal(await client.locator('[data-detail="endpoint"]').innerText(), dash(parent.endpoint));
    assert.equal(await client.locator('[data-detail="peer-service"]').innerText(), "ratings");
    if (shots) await page.screenshot({ path: `${shots}/console-trace-waterfall.png`, fullPage: true });
  });

  await step("back to the list keeps the search; a trace opens by pasted id or deep link", async () => {
    await page.getByRole("link", { name: "← Traces" }).click();
    await page.locator(`tr.trace-row[data-trace-id="${traceId}"]`).waitFor();
    await waitValue(page.getByLabel("Service", { exact: true }), "demo/catalog");
    // A traceparent header value, in capitals, as someone might paste it from a log.
    await page.getByLabel("Trace id", { exact: true }).fill(`00-${traceId.toUpperCase()}-${expected[0].spanId}-01`);
    await page.getByRole("button", { name: "Open trace" }).click();
    await page.waitForURL(`**/traces/${traceId}`);
    await page.locator("ol.spans > li").nth(expected.length - 1).waitFor();
    await page.getByRole("link", { name: "← Traces" }).click();
    await page.getByLabel("Trace id", { exact: true }).fill("not-a-trace");
    await page.getByRole("button", { name: "Open trace" }).click();
    await page.locator('[data-field="trace-id"]').getByText("is not a trace id").waitFor();
    // A full page load of the deep link (the server's SPA fallback), then an unknown id.
    await page.goto(`${url}/traces/${traceId}`);
    await page.locator("ol.spans > li").nth(expected.length - 1).waitFor();
    assert.equal(await page.locator("ol.spans > li").count(), expected.length);
    await page.goto(`${url}/traces/${"ab".repeat(16)}`);
    await page.locator('[data-empty="trace"]').waitFor();
  });

  await step("errors only: the demo's requests succeed, so the list is empty or all red", async () => {
    await page.getByRole("navigation").getByRole("link", { name: "Traces" }).click();
    await page.getByLabel("Errors only").check();
    const before = await page.locator("[data-answered-at]").getAttribute("data-answered-at");
    await page.getByRole("button", { name: "Search" }).click();
    await page.waitForFunction((v) => document.querySelector("[data-answered-at]").dataset.answeredAt !== v, before);
    const rows = await page.locator("tr.trace-row").count();
    const red = await page.locator("tr.trace-row.error").count();
    assert.equal(red, rows, "every errors-only result is marked as an error");
    await page.getByLabel("Errors only").uncheck();
  });

  await step("Topology shows the three services and both calls with a nonzero rate", async () => {
    await page.getByRole("navigation").getByRole("link", { name: "Topology" }).click();
    await page.getByRole("heading", { name: "Topology" }).waitFor();
    for (const svc of ["frontend", "catalog", "ratings"]) {
      await page.locator(`svg.graph g.node[data-node="${svc}"]`).waitFor();
    }
    for (const edge of ["frontend->catalog", "catalog->ratings"]) {
      await page.locator(`svg.graph g.edge[data-edge="${edge}"]`).waitFor();
      const rate = Number(await page.locator(`table.edges tr[data-edge="${edge}"]`).getAttribute("data-rate"));
      assert.ok(rate > 0, `${edge} rate ${rate}`);
      assert.match(await page.locator(`table.edges tr[data-edge="${edge}"]`).innerText(), /\/s/);
    }
    // Drawn left to right by call depth.
    const x = async (svc) => (await page.locator(`svg.graph g.node[data-node="${svc}"] rect`).boundingBox()).x;
    const [f, c, r] = [await x("frontend"), await x("catalog"), await x("ratings")];
    assert.ok(f < c && c < r, `frontend ${f} < catalog ${c} < ratings ${r}`);
    assert.equal(await page.locator("table.edges tr.error").count(), 0, "the demo has no failing calls");
    await page.getByText(/updated \d+s ago/).waitFor();
    if (shots) await page.screenshot({ path: `${shots}/console-topology.png`, fullPage: true });
  });

  await step("Topology polls, and the window selector asks again at once", async () => {
    const first = await page.locator("[data-updated]").getAttribute("data-updated");
    await page.waitForFunction((v) => document.querySelector("[data-updated]").dataset.updated !== v, first, { timeout: 15_000 });
    await page.getByRole("button", { name: "1m", exact: true }).click();
    assert.equal(await page.getByRole("button", { name: "1m", exact: true }).getAttribute("aria-pressed"), "true");
    await page.locator("figcaption").getByText("over the last 1m").waitFor();
    await page.locator('table.edges tr[data-edge="frontend->catalog"]').waitFor();
  });

  await step("no errors in the browser console", async () => {
    assert.deepEqual(run.pageErrors, []);
  });
} catch {
  // Reported by step().
}

await run.finish("all traces browser checks passed");
