// What the console's browser tests share: reading their settings from the environment,
// launching headless Chromium (Debian's /usr/bin/chromium) with playwright-core, named steps
// that screenshot every open page when one fails, signing in, collecting the pages' errors,
// and the exit status the Rust side checks.
import { chromium } from "playwright-core";
import { tmpdir } from "node:os";

/// Playwright's default timeout for every page of a test.
export const TIMEOUT = 20_000;

/// The environment variable `name`, or exit 2 naming it (`script` says who asks).
export function need(script, name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${script}: set ${name}`);
    process.exit(2);
  }
  return v;
}

/// One test run: a browser, its steps and what its pages logged as errors.
export class Run {
  /// Launch Chromium (CHROMIUM, default /usr/bin/chromium). `name` goes into the paths of
  /// failure screenshots.
  static async start(name) {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    return new Run(name, browser);
  }

  constructor(name, browser) {
    this.name = name;
    this.browser = browser;
    this.failures = 0;
    /// Uncaught page exceptions and console errors of every page opened by session().
    this.pageErrors = [];
  }

  /// Run one named check: print ok/not ok (TAP-like); on failure screenshot every open page
  /// and rethrow, so the rest of the scenario is skipped.
  async step(title, fn) {
    const t = Date.now();
    try {
      await fn();
      console.log(`ok - ${title} (${Date.now() - t} ms)`);
    } catch (e) {
      this.failures++;
      console.log(`not ok - ${title}\n${String(e.stack || e).replace(/^/gm, "    ")}`);
      // What each open page showed when it failed.
      let n = 0;
      for (const c of this.browser.contexts()) {
        for (const p of c.pages()) {
          const path = `${tmpdir()}/quiver-${this.name}-failure-${++n}.png`;
          await p.screenshot({ path, fullPage: true }).catch(() => {});
          console.log(`    screenshot of ${p.url()}: ${path}`);
        }
      }
      throw e;
    }
  }

  /// A new browser context on `url`, signed in with `token` unless it is null; `label`
  /// prefixes the page's errors.
  async session(url, token, label) {
    const context = await this.browser.newContext({ viewport: { width: 1366, height: 900 } });
    context.setDefaultTimeout(TIMEOUT);
    const page = await context.newPage();
    page.on("pageerror", (e) => this.pageErrors.push(`${label}: ${e}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !/Failed to load resource/.test(m.text())) {
        this.pageErrors.push(`${label}: ${m.text()}`);
      }
    });
    await page.goto(url + "/");
    if (token) await signIn(page, token);
    return page;
  }

  /// Close the browser and exit: 1 if a step failed or a page logged an error, else print
  /// `passed` (the line the Rust test looks for).
  async finish(passed) {
    await this.browser.close();
    if (this.failures > 0 || this.pageErrors.length > 0) {
      if (this.pageErrors.length) console.log(`browser errors:\n  ${this.pageErrors.join("\n  ")}`);
      process.exit(1);
    }
    console.log(passed);
  }
}

/// Sign in on the console's sign-in form and wait for the first page (Services).
export async function signIn(page, token) {
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Services" }).waitFor();
}

/// Wait until an input shows `value` (a form filled in by the page itself).
export async function waitValue(locator, value) {
  const deadline = Date.now() + TIMEOUT;
  let last;
  while (Date.now() < deadline) {
    last = await locator.inputValue().catch(() => undefined);
    if (last === value) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`input value stayed ${JSON.stringify(last)}, expected ${JSON.stringify(value)}`);
}
