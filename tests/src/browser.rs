//! What the browser tests share: finding Chromium, node and playwright-core (failing with the
//! install command when one is missing). The console they load is the bundle embedded in
//! quiver-control (the committed `console/dist`): nothing is built.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub const INSTALL: &str = "apt-get install -y chromium chromium-driver nodejs npm \
    && (cd console/e2e && npm ci) (or run scripts/test.sh, which installs all of it)";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Everything a browser test needs that cargo does not install; `test` names it in the
/// failure.
pub fn check_prerequisites(e2e: &Path, test: &str) {
    let mut missing = Vec::new();
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node (apt-get install -y nodejs npm)".to_string());
    }
    if !chromium().exists() {
        missing.push(format!(
            "{} (apt-get install -y chromium chromium-driver)",
            chromium().display()
        ));
    }
    if !e2e
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("console/e2e/node_modules (cd console/e2e && npm ci)".to_string());
    }
    assert!(
        missing.is_empty(),
        "{test} needs: {}\ninstall with: {INSTALL}",
        missing.join(", ")
    );
}

pub fn show(what: &str, out: &Output) -> String {
    format!(
        "{what} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `node SCRIPT` in `e2e` with `env` plus CHROMIUM (and SCREENSHOT_DIR when
/// QUIVER_CONSOLE_SCREENSHOTS is set), at most 240 s; prints and returns what it wrote.
pub async fn run_e2e(e2e: &Path, script: &str, env: &[(&str, &str)]) -> Output {
    let mut node = tokio::process::Command::new("node");
    node.arg(script)
        .current_dir(e2e)
        .envs(env.iter().copied())
        .env("CHROMIUM", chromium())
        .kill_on_drop(true);
    if let Some(dir) = std::env::var_os("QUIVER_CONSOLE_SCREENSHOTS") {
        node.env("SCREENSHOT_DIR", dir);
    }
    let out = tokio::time::timeout(Duration::from_secs(240), node.output())
        .await
        .expect("the browser test finished within 240 s")
        .expect("run node");
    println!("{}", show(&format!("node {script}"), &out));
    out
}
