//! The web console in a real headless Chromium against a real control plane on Postgres:
//! starts quiver-control serving the bundle embedded in its binary (the committed
//! `console/dist`; nothing is built), registers two endpoints the way proxies do, and runs
//! `console/e2e/console.test.mjs` (playwright-core). Every gRPC-web call the browser makes is
//! a real network call to this server.
//!
//! Needs node, Debian's chromium and `npm ci` in console/e2e; when any is missing the test
//! fails and says what to install (it never skips). `QUIVER_CONSOLE_SCREENSHOTS=DIR` also
//! writes the screenshots used in docs/console.md.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use common::mesh::{join, registration};
use common::{PgTestDb, REVIEWS_SERVICE, TestServer, doc};
use quiver_api::v1;
use quiver_tests::browser::{check_prerequisites, repo, run_e2e, show};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_in_a_real_browser() {
    let repo = repo();
    let e2e = repo.join("console/e2e");
    check_prerequisites(&e2e, "the console browser test");
    // (a) A control plane on Postgres serving the embedded console.
    let db = PgTestDb::create().await;
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        Some(&db.url),
        data.path(),
        &[
            "--lease-ttl",
            "600s",
            // The two endpoints below are made-up addresses registered from loopback.
            "--registration-exception=spiffe://mesh.local/ns/shop/sa/reviews=10.0.0.0/24",
        ],
    )
    .await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .expect("apply the reviews service");
    // Two endpoints, registered over mTLS exactly as proxies do.
    let mut proxies = Vec::new();
    for (address, version) in [("10.0.0.1:15443", "v1"), ("10.0.0.2:15443", "v2")] {
        let proxy = join(&server, "shop", "reviews").await;
        proxy
            .client()
            .await
            .register(registration("reviews", address, version))
            .await
            .expect("register a workload");
        proxies.push(proxy);
    }
    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: "console browser test".into(),
            ttl: String::new(),
        })
        .await
        .expect("viewer token")
        .into_inner()
        .token;

    // (b) The browser scenarios.
    let out = run_e2e(
        &e2e,
        "console.test.mjs",
        &[
            ("QUIVER_URL", &server.url),
            ("QUIVER_ADMIN_TOKEN", &server.admin),
            ("QUIVER_VIEWER_TOKEN", &viewer),
            ("QUIVERCTL", env!("CARGO_BIN_EXE_quiverctl")),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        show("node console.test.mjs", &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all console browser checks passed"),
        "{}",
        show("node console.test.mjs", &out)
    );
    drop(proxies);
    server.stop().await;
}

/// The canary scenario, run by node from `console/e2e` (so `./harness.mjs` and
/// playwright-core resolve there) with `--input-type=module -e`. It opens the Canaries page,
/// has quiverctl apply a canary (through the API), and follows it on the open pages: the
/// controller starts it, the page shows it without a reload, the buttons pause and abort it,
/// the Topology page marks the service while it runs, and a viewer gets every control disabled.
const CANARY_SCENARIO: &str = r#"
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import { Run, need as needs } from "./harness.mjs";

const need = (name) => needs("canary scenario", name);
const url = need("QUIVER_URL");
const adminToken = need("QUIVER_ADMIN_TOKEN");
const viewerToken = need("QUIVER_VIEWER_TOKEN");
const quiverctl = need("QUIVERCTL");
const shots = process.env.SCREENSHOT_DIR;
const ctl = (args, input) => execFileSync(quiverctl, args, {
  input, encoding: "utf8", env: { ...process.env, QUIVER_SERVER: url, QUIVER_TOKEN: adminToken },
});
const stored = () => JSON.parse(ctl(["get", "canary", "reviews-v2", "-n", "shop", "-o", "json"]));
// A long interval: no check is due during the test, so the canary stays at its first step.
const canary = `apiVersion: quiver.dev/v1
kind: Canary
metadata: {name: reviews-v2, namespace: shop}
spec: {service: reviews, stableSubset: v1, canarySubset: v2, steps: [10, 50, 100], interval: 10m}
`;
const LIVE = { timeout: 10_000 };
const buttons = ["Pause", "Resume", "Promote", "Abort"];
async function enabled(page) {
  const card = page.locator(".canary-state");
  const out = {};
  for (const b of buttons) out[b] = await card.getByRole("button", { name: b, exact: true }).isEnabled();
  return out;
}

const run = await Run.start("canary");
const step = (name, fn) => run.step(name, fn);
try {
  let admin;
  await step("a canary applied elsewhere appears on the open list and starts, without a reload", async () => {
    admin = await run.session(url, adminToken, "admin");
    await admin.getByRole("link", { name: "Canaries" }).click();
    await admin.getByText("No canaries yet.").waitFor();
    ctl(["apply", "-f", "-"], canary);
    const row = admin.locator('tr[data-canary="shop/reviews-v2"]');
    await row.locator('[data-phase="Progressing"]').first().waitFor(LIVE);
    await row.locator("ol.step-bar li.current", { hasText: "10%" }).waitFor();
    assert.equal(await row.locator("ol.step-bar li").count(), 3);
    await row.locator(".weight-now", { hasText: "10%" }).waitFor();
    assert.equal(await admin.evaluate(() => performance.getEntriesByType("navigation").length), 1, "no reload");
  });

  await step("the canary page: step bar, phase, weight, reason, charts, events; Pause pauses it", async () => {
    await admin.locator('tr[data-canary="shop/reviews-v2"]').getByRole("link").click();
    const card = admin.locator(".canary-state");
    await card.locator('.phase-line [data-phase="Progressing"]').waitFor();
    await card.locator("ol.step-bar li.current", { hasText: "10%" }).waitFor();
    await card.locator(".weight-now", { hasText: "10% to the canary" }).waitFor();
    await card.locator(".canary-message", { hasText: "step 1 of 3 (10%)" }).waitFor();
    await card.locator('figure[data-chart="weight"] polyline').waitFor({ state: "attached" });
    await card.locator('ol.events li[data-phase="Progressing"]').first().waitFor();
    assert.deepEqual(await enabled(admin), { Pause: true, Resume: false, Promote: true, Abort: true });
    await card.getByLabel("Reason (optional)").fill("freeze for the demo");
    await card.getByRole("button", { name: "Pause", exact: true }).click();
    await card.locator('.phase-line [data-phase="Paused"]').waitFor(LIVE);
    await card.locator('ol.events li[data-phase="Paused"]', { hasText: "paused at 10%: freeze for the demo" }).waitFor();
    assert.deepEqual(await enabled(admin), { Pause: false, Resume: true, Promote: true, Abort: true });
    assert.equal(stored().status.phase, "Paused");
    if (shots) await admin.screenshot({ path: `${shots}/console-canary.png`, fullPage: true });
  });

  await step("a resume made with quiverctl shows on the open page", async () => {
    ctl(["canary", "resume", "reviews-v2", "-n", "shop"]);
    await admin.locator('.canary-state .phase-line [data-phase="Progressing"]').waitFor(LIVE);
  });

  await step("the Topology page marks the service with a running canary and its weight", async () => {
    await admin.getByRole("link", { name: "Topology" }).click();
    const mark = admin.locator('[data-canary-running="shop/reviews-v2"]');
    await mark.getByText("canary 10% · Progressing").waitFor(LIVE);
    assert.equal(await mark.getAttribute("data-service"), "shop/reviews");
    await mark.getByRole("link").click();
    await admin.locator(".canary-state").waitFor();
  });

  await step("a viewer sees the canary but every control is disabled", async () => {
    const viewer = await run.session(url, viewerToken, "viewer");
    await viewer.goto(url + "/canaries/shop/reviews-v2");
    await viewer.locator('.canary-state .phase-line [data-phase="Progressing"]').waitFor();
    assert.deepEqual(await enabled(viewer), { Pause: false, Resume: false, Promote: false, Abort: false });
    assert.ok(await viewer.getByLabel("Reason (optional)").isDisabled());
    await viewer.context().close();
  });

  await step("Abort rolls the canary back; the API reports Aborted at 0%", async () => {
    const card = admin.locator(".canary-state");
    await card.getByRole("button", { name: "Abort", exact: true }).click();
    await card.locator('.phase-line [data-phase="Aborted"]').waitFor(LIVE);
    await card.locator(".weight-now", { hasText: "0% to the canary" }).waitFor();
    await card.locator("ol.step-bar li.stopped", { hasText: "10%" }).waitFor();
    await card.locator(".canary-message", { hasText: "aborted by hand" }).waitFor();
    assert.deepEqual(await enabled(admin), { Pause: false, Resume: false, Promote: true, Abort: false });
    const s = stored().status;
    assert.equal(s.phase, "Aborted");
    assert.equal(s.canaryWeight ?? 0, 0);
    await admin.getByRole("link", { name: "Topology" }).click();
    await admin.getByRole("heading", { name: "Topology" }).waitFor();
    await admin.waitForTimeout(500);
    assert.equal(await admin.locator("[data-canary-running]").count(), 0, "no running canary marked");
  });

  await step("no errors in the browser console", async () => {
    assert.deepEqual(run.pageErrors, []);
  });
} catch {
  // Reported by step().
}
await run.finish("all canary browser checks passed");
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_followed_and_steered_in_a_real_browser() {
    let repo = repo();
    let e2e = repo.join("console/e2e");
    check_prerequisites(&e2e, "the console canary browser test");
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(None, data.path()).await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .expect("apply the reviews service (subsets v1 and v2)");
    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: "console canary browser test".into(),
            ttl: String::new(),
        })
        .await
        .expect("viewer token")
        .into_inner()
        .token;

    let mut node = tokio::process::Command::new("node");
    node.args(["--input-type=module", "-e", CANARY_SCENARIO])
        .current_dir(&e2e)
        .env("QUIVER_URL", &server.url)
        .env("QUIVER_ADMIN_TOKEN", &server.admin)
        .env("QUIVER_VIEWER_TOKEN", &viewer)
        .env("QUIVERCTL", env!("CARGO_BIN_EXE_quiverctl"))
        .env("CHROMIUM", quiver_tests::browser::chromium())
        .kill_on_drop(true);
    if let Some(dir) = std::env::var_os("QUIVER_CONSOLE_SCREENSHOTS") {
        node.env("SCREENSHOT_DIR", dir);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(240), node.output())
        .await
        .expect("the browser test finished within 240 s")
        .expect("run node");
    println!("{}", show("node (canary scenario)", &out));
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("all canary browser checks passed"),
        "{}",
        show("node (canary scenario)", &out)
    );
    // What the API reports after the Abort the browser clicked.
    let stored = admin
        .get_canary(v1::GetRequest {
            namespace: "shop".into(),
            name: "reviews-v2".into(),
        })
        .await
        .expect("get the canary")
        .into_inner()
        .status
        .unwrap_or_default();
    assert_eq!(
        (stored.phase.as_str(), stored.canary_weight),
        ("Aborted", 0)
    );
    assert!(
        stored
            .events
            .iter()
            .any(|e| e.message == "paused at 10%: freeze for the demo"),
        "the reason typed in the console is in the events: {:?}",
        stored.events
    );
    server.stop().await;
}
