//! What the browser tests share: finding Chromium, node and playwright-core (failing with the
//! install command when one is missing), and building the console bundle.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

pub const INSTALL: &str = "apt-get install -y chromium chromium-driver nodejs npm \
    rustc-web cargo-web rust-web-src lld-22 && (cd console/e2e && npm ci) \
    (or run .ci/run, which installs all of it)";

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

/// `console/build.sh --if-stale`: the bundle, rebuilt only when its sources changed.
pub async fn build_bundle(repo: &Path) {
    let started = Instant::now();
    let build = tokio::process::Command::new(repo.join("console/build.sh"))
        .arg("--if-stale")
        .output()
        .await
        .expect("run console/build.sh");
    assert!(
        build.status.success(),
        "{}\ninstall with: {INSTALL}",
        show("console/build.sh --if-stale", &build)
    );
    println!(
        "console/build.sh --if-stale: {:?}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&build.stdout)
    );
}
