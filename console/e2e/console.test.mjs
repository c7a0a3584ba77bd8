// Browser test of the Quiver console: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core against a real quiver-control. Run by controlplane/tests/console_browser.rs,
// which starts the control plane with the built bundle and passes, by environment:
//   QUIVER_URL, QUIVER_ADMIN_TOKEN, QUIVER_VIEWER_TOKEN, QUIVERCTL (path to the binary),
//   CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (optional: write docs screenshots).
// Changes "made elsewhere" go through quiverctl, i.e. the same API over native gRPC.
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import { Run, need as needs, signIn, waitValue } from "./harness.mjs";

const need = (name) => needs("console.test.mjs", name);
const url = need("QUIVER_URL");
const adminToken = need("QUIVER_ADMIN_TOKEN");
const viewerToken = need("QUIVER_VIEWER_TOKEN");
const quiverctl = need("QUIVERCTL");
const shots = process.env.SCREENSHOT_DIR;

function ctl(args, input) {
  return execFileSync(quiverctl, args, {
    input,
    env: { ...process.env, QUIVER_SERVER: url, QUIVER_TOKEN: adminToken },
    encoding: "utf8",
  });
}

function storedRoute(name) {
  return JSON.parse(ctl(["get", "route", name, "-n", "shop", "-o", "json"]));
}

function weights(route, rule = 0) {
  return Object.fromEntries(route.spec.rules[rule].backends.map((b) => [b.subset, b.weight ?? 0]));
}

const routeYaml = (v1, v2) => `apiVersion: quiver.dev/v1
kind: Route
metadata: {name: web, namespace: shop}
spec:
  service: reviews
  rules:
  - name: default
    backends:
    - {subset: v1, weight: ${v1}}
    - {subset: v2, weight: ${v2}}
    timeout: 2s
`;

const run = await Run.start("console");
const step = (name, fn) => run.step(name, fn);
const session = (token, label) => run.session(url, token, label);

async function go(page, path) {
  // Client-side navigation through the nav bar or a full load (SPA fallback) both work.
  await page.goto(url + path);
}

try {
  let admin;
  await step("sign-in refuses an unknown token, then accepts the admin token", async () => {
    admin = await session(null, "admin");
    await page_text(admin, "Sign in with an API token");
    await admin.getByLabel("API token").fill("qvr_not-a-real-token");
    await admin.getByRole("button", { name: "Sign in" }).click();
    await admin.locator('[data-field="token"]').getByText("not known").waitFor();
    await signIn(admin, adminToken);
    assert.equal(await admin.locator(".role").innerText(), "admin");
    const stored = await admin.evaluate(() => [sessionStorage.getItem("quiver.token"), localStorage.length]);
    assert.deepEqual(stored, [adminToken, 0], "token in sessionStorage only");
  });

  await step("services page lists the service with its live endpoints", async () => {
    const card = admin.locator('[data-service="shop/reviews"]');
    await card.getByText("2 endpoints").waitFor();
    await card.getByRole("cell", { name: "10.0.0.1:15443" }).waitFor();
    await card.getByRole("cell", { name: "v2", exact: true }).waitFor();
    await card.getByText("spiffe://mesh.local/ns/shop/sa/reviews").first().waitFor();
    await card.getByText(/healthy, .* left/).first().waitFor();
    if (shots) await admin.screenshot({ path: `${shots}/console-services.png` });
  });

  await step("a bad route shows the API's field errors before any Apply: the console runs the policy compiler", async () => {
    // Every gRPC-web call the page makes to ApplyRoute in this step (there must be none).
    const applies = [];
    const onRequest = (r) => { if (r.url().includes("/quiver.v1.MeshAdmin/ApplyRoute")) applies.push(r.url()); };
    admin.on("request", onRequest);
    await admin.getByRole("link", { name: "Routes" }).click();
    await admin.getByRole("button", { name: "New route" }).click();
    await admin.locator("#route-namespace").fill("shop");
    await admin.locator("#route-name").fill("web");
    await admin.locator("#route-service").selectOption("reviews");
    await admin.getByRole("button", { name: "Add backend" }).click();
    await admin.locator("#r0-b0-subset").selectOption("v1");
    await admin.locator("#r0-b1-subset").selectOption("v2");
    await admin.locator("#r0-b0-weight").fill("70");
    await admin.locator("#r0-b1-weight").fill("20");
    await admin.locator("#r0-timeout").fill("soon");
    const err = admin.locator('[data-field="spec.rules[0].backends"]');
    await err.getByText("weights sum to 90, must sum to 100").waitFor();
    await admin.getByRole("button", { name: "Create route" }).click();
    await admin.locator(".banner.error").getByText("Route shop/web is invalid").waitFor();
    // The control plane's own messages (quiver_policy::validate, compiled into the console)
    // sit next to their fields: the weights (also shown live while editing) and the timeout.
    await admin.locator('[data-field="spec.rules[0].timeout"]').getByText("not a duration").waitFor();
    await page_text(err, "weights sum to 90, must sum to 100");
    admin.off("request", onRequest);
    assert.deepEqual(applies, [], "refused in the browser: no ApplyRoute call was made");
    if (shots) await admin.screenshot({ path: `${shots}/console-route-editor.png`, fullPage: true });
    assert.throws(() => storedRoute("web"), /not found|NotFound|NOT_FOUND/i, "nothing was stored");
  });

  await step("the slider keeps the sum at 100; an 80/20 route created in the UI reads back from the API", async () => {
    await admin.locator('input[aria-label="Weight slider for backend 1 of rule 1"]').fill("80");
    assert.equal(await admin.locator("#r0-b1-weight").inputValue(), "20");
    await admin.locator("#r0-timeout").fill("2s");
    await admin.locator("#r0-retries-on").check();
    await admin.locator("#r0-attempts").fill("3");
    await admin.getByRole("button", { name: "Create route" }).click();
    await admin.getByText("Route shop/web created").waitFor();
    const route = storedRoute("web");
    assert.deepEqual(weights(route), { v1: 80, v2: 20 });
    assert.equal(route.spec.rules[0].timeout, "2s");
    assert.equal(route.spec.rules[0].retries.attempts, 3);
  });

  await step("a change applied with quiverctl shows up on the open page without a reload", async () => {
    const row = admin.locator('[data-route="shop/web"]');
    await row.getByText("v1 80% · v2 20%").waitFor();
    ctl(["apply", "-f", "-"], routeYaml(60, 40));
    await row.getByText("v1 60% · v2 40%").waitFor();
  });

  await step("two sessions edit the same route: the second gets 'changed since you opened it'", async () => {
    const second = await session(adminToken, "second");
    for (const p of [admin, second]) {
      await go(p, "/routes/shop/web");
      await waitValue(p.locator("#r0-b0-weight"), "60");
    }
    await admin.locator("#r0-b0-weight").fill("50");
    await admin.locator("#r0-b1-weight").fill("50");
    await admin.getByRole("button", { name: "Save changes" }).click();
    await admin.getByText(/Saved \(version \d+\)/).waitFor();

    await second.locator("#r0-b0-weight").fill("30");
    await second.locator("#r0-b1-weight").fill("70");
    await second.getByRole("button", { name: "Save changes" }).click();
    const conflict = second.locator(".banner.conflict", { hasText: "Nothing was saved" });
    await conflict.getByText("This route changed since you opened it.").waitFor();
    assert.deepEqual(weights(storedRoute("web")), { v1: 50, v2: 50 }, "the first save stands");
    await conflict.getByRole("button", { name: "Reload the current version" }).click();
    await waitValue(second.locator("#r0-b0-weight"), "50");
    await second.context().close();
  });

  await step("delete asks for confirmation", async () => {
    await admin.getByRole("button", { name: "Delete route…" }).click();
    await admin.getByRole("alertdialog").getByRole("button", { name: "Cancel" }).click();
    storedRoute("web"); // still there
  });

  await step("canary: create in the UI; the controller takes it and its page shows the progress", async () => {
    await go(admin, "/canaries/new");
    await admin.locator("#canary-namespace").fill("shop");
    await admin.locator("#canary-name").fill("reviews-v2");
    await admin.locator("#canary-service").selectOption("reviews");
    await admin.locator("#canary-stable").selectOption("v1");
    await admin.locator("#canary-canary").selectOption("v2");
    await admin.locator("#canary-steps").fill("10, 50, 100");
    await admin.locator("#canary-threshold").fill("2");
    await admin.locator("#canary-min-requests").fill("30");
    await admin.locator("#canary-p50").fill("80ms");
    await admin.getByRole("button", { name: "Create canary" }).click();
    await admin.getByText("Canary shop/reviews-v2 created").waitFor();
    const stored = JSON.parse(ctl(["get", "canary", "reviews-v2", "-n", "shop", "-o", "json"]));
    assert.equal(stored.spec.threshold, 2);
    assert.equal(stored.spec.minRequests, 30);
    assert.equal(stored.spec.successCriteria.maxP50Latency, "80ms");
    assert.equal(stored.spec.mirrorPercent, undefined, "no mirror stage unless asked");
    const row = admin.locator('[data-canary="shop/reviews-v2"]');
    // The controller starts it at its first step; the console never rewrites the route.
    await row.locator('[data-phase="Progressing"]').first().waitFor();
    await row.locator(".weight-now", { hasText: "10%" }).waitFor();
    await row.getByRole("link").click();
    await admin.locator('.canary-state .phase-line [data-phase="Progressing"]').waitFor();
    assert.equal(await admin.getByRole("button", { name: "Apply weight" }).count(), 0);
  });

  await step("authorization policy and mesh default: create and edit", async () => {
    await go(admin, "/policies/new");
    await admin.locator("#policy-namespace").fill("shop");
    await admin.locator("#policy-name").fill("reviews-callers");
    await admin.locator("#policy-service").selectOption("reviews");
    await admin.getByRole("button", { name: "Add allow rule" }).click();
    await admin.locator("#allow-0-sources").fill("not-a-spiffe-id");
    await admin.locator("#allow-0-methods").fill("GET");
    await admin.getByRole("button", { name: "Create policy" }).click();
    await admin.locator('[data-field="spec.allow[0].sources"]').waitFor();
    await admin.locator("#allow-0-sources").fill("spiffe://mesh.local/ns/shop/sa/*");
    await admin.getByRole("button", { name: "Create policy" }).click();
    await admin.getByText("Policy shop/reviews-callers created").waitFor();
    await admin.locator('[data-policy="shop/reviews-callers"]').getByText("spiffe://mesh.local/ns/shop/sa/* · GET · any path").waitFor();
    await go(admin, "/mesh");
    await admin.getByLabel("Deny").check();
    await admin.getByRole("button", { name: "Save settings" }).click();
    await admin.getByText(/Saved \(version \d+\)/).waitFor();
    const mesh = JSON.parse(ctl(["get", "meshconfig", "mesh", "-o", "json"]));
    assert.equal(mesh.spec.defaultPolicy, "DENY");
  });

  await step("viewer: every write control disabled, and a forced write is refused by the API", async () => {
    const viewer = await session(viewerToken, "viewer");
    assert.equal(await viewer.locator(".role").innerText(), "viewer");
    await viewer.getByText("(read-only)").waitFor();
    for (const [path, button] of [["/routes", "New route"], ["/canaries", "New canary"], ["/policies", "New policy"]]) {
      await go(viewer, path);
      assert.ok(await viewer.getByRole("button", { name: button }).isDisabled(), `${button} disabled`);
    }
    for (const path of ["/routes/shop/web", "/canaries/shop/reviews-v2", "/policies/shop/reviews-callers", "/mesh"]) {
      await go(viewer, path);
      await viewer.locator("form.editor").waitFor();
      await viewer.locator("form.editor input").first().waitFor();
      const enabled = await viewer.$$eval(
        "form.editor input, form.editor select, form.editor textarea, form.editor button, .canary-state input, .canary-state button",
        (els) => els.filter((e) => !e.matches(":disabled")).map((e) => e.outerHTML.slice(0, 80)),
      );
      assert.deepEqual(enabled, [], `${path}: enabled write controls`);
    }
    const forced = await viewer.evaluate(async (token) => {
      const r = await fetch("/quiver.v1.MeshAdmin/DeleteRoute", {
        method: "POST",
        headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${token}` },
        // DeleteRequest { namespace: "shop", name: "web" }
        body: new Uint8Array([0, 0, 0, 0, 11, 10, 4, 115, 104, 111, 112, 18, 3, 119, 101, 98]),
      });
      return { status: r.headers.get("grpc-status"), message: decodeURIComponent(r.headers.get("grpc-message") || "") };
    }, viewerToken);
    assert.equal(forced.status, "7", `PERMISSION_DENIED, got ${JSON.stringify(forced)}`);
    assert.match(forced.message, /viewer/);
    storedRoute("web"); // still there
    await viewer.getByRole("button", { name: "Sign out" }).click();
    await viewer.getByLabel("API token").waitFor();
    assert.equal(await viewer.evaluate(() => sessionStorage.getItem("quiver.token")), null);
    await viewer.context().close();
  });

  await step("no errors in the browser console", async () => {
    assert.deepEqual(run.pageErrors, []);
  });
} catch {
  // Reported by step().
}

async function page_text(locator, text) {
  await locator.getByText(text, { exact: false }).first().waitFor();
}

await run.finish("all console browser checks passed");
