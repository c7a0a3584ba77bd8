//! Podman for the container tests (`tests/images.rs`, `tests/pods.rs`): always with
//! `--runtime runc` (crun fails on these machines' cgroups, ../shared/TOOLCHAIN.md), failing
//! with the install command when podman is missing, and the target dir the image builds share.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What a test that needs podman says when it is missing.
pub const INSTALL: &str = "install it with: apt-get install -y podman runc (and put \
    `default_ulimits = []` under [containers] in /etc/containers/containers.conf; \
    scripts/test.sh does both)";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `podman --runtime runc ARGS` with `stdin`, waited for.
pub fn podman_with(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run podman: {e}\n{INSTALL}"));
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to podman {}: {e}", args.join(" ")));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for podman {}: {e}", args.join(" ")))
}

/// `podman --runtime runc ARGS`, waited for.
pub fn podman(args: &[&str]) -> Output {
    podman_with(args, None)
}

/// A command's stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `podman ARGS`, which must succeed: its stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {}: {}\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The workspace's target dir (where the running test was built): the image builds share it.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| panic!("no target dir (CACHEDIR.TAG) above {}", exe.display()))
        .to_path_buf()
}
