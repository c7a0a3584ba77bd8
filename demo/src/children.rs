//! The demo's child processes (sample apps and sidecars, all `quiver-demo` itself): spawn
//! them with their output in a log file, notice when one exits on its own, and stop them in
//! order with SIGTERM, then SIGKILL after a grace period.
//!
//! No orphans: every child is in its own process group (so a terminal's Ctrl-C reaches only
//! the demo, which then stops them in order), is killed when its handle is dropped (a demo
//! that panics unwinds through here), and exits by itself when its parent goes away
//! ([`exit_with_parent`], for a demo killed with SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

/// The environment variable that tells a child which pid its parent demo has.
const PARENT_ENV: &str = "QUIVER_DEMO_PARENT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    App,
    Sidecar,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: the demo prints roles in aligned columns.
        f.pad(match self {
            Role::App => "app",
            Role::Sidecar => "sidecar",
        })
    }
}

/// One running child.
pub struct Proc {
    pub name: String,
    pub role: Role,
    pub pid: u32,
    pub log: PathBuf,
    stop: Option<oneshot::Sender<Duration>>,
    /// The supervising task, until its result is read into `status`.
    done: Option<tokio::task::JoinHandle<Option<ExitStatus>>>,
    status: Option<String>,
}

impl Proc {
    /// Wait for the child to be gone; how it ended.
    async fn ended(&mut self) -> String {
        if let Some(done) = self.done.take() {
            self.status = Some(match done.await {
                Ok(Some(s)) if s.success() => "exited 0".to_string(),
                Ok(Some(s)) => s.to_string(),
                Ok(None) => "gone (status unknown)".to_string(),
                Err(_) => "supervisor task failed".to_string(),
            });
        }
        self.status.clone().unwrap_or_default()
    }
}

/// A child that exited without being asked to.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub role: Role,
    pub status: String,
    pub log: PathBuf,
}

/// Every child of the demo.
pub struct Children {
    exe: PathBuf,
    procs: Vec<Proc>,
    exited_tx: mpsc::UnboundedSender<usize>,
    exited_rx: mpsc::UnboundedReceiver<usize>,
}

impl Children {
    pub fn new() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding my own executable")?;
        let (exited_tx, exited_rx) = mpsc::unbounded_channel();
        Ok(Self {
            exe,
            procs: Vec::new(),
            exited_tx,
            exited_rx,
        })
    }

    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Start `quiver-demo ARGS...` with stdout and stderr in `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        role: Role,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        // The user's own QUIVER_* settings (QUIVER_ZONE, QUIVER_PROXY_CONFIG, ...) are for
        // their mesh, not the demo's: the children get exactly the flags the demo chose.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("QUIVER_") {
                cmd.env_remove(&key);
            }
        }
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log file handle")?)
            .stderr(file)
            .kill_on_drop(true)
            // Its own group: Ctrl-C in the terminal goes to the demo only, which then stops
            // the children in order (sidecars drain and deregister before their apps go).
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} {role}"))?;
        let pid = child.id().context("child pid")?;
        let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
        let index = self.procs.len();
        let exited = self.exited_tx.clone();
        let done = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let _ = exited.send(index);
                    status.ok()
                }
                grace = stop_rx => {
                    // A dropped sender (the demo is unwinding) means: no grace.
                    let grace = grace.unwrap_or(Duration::ZERO);
                    terminate(pid);
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status.ok(),
                        Err(_) => {
                            let _ = child.kill().await;
                            child.wait().await.ok()
                        }
                    }
                }
            }
        });
        self.procs.push(Proc {
            name: name.to_string(),
            role,
            pid,
            log: log.to_path_buf(),
            stop: Some(stop_tx),
            done: Some(done),
            status: None,
        });
        Ok(pid)
    }

    /// Wait until some child exits without being asked to.
    pub async fn next_exit(&mut self) -> Exited {
        loop {
            let Some(index) = self.exited_rx.recv().await else {
                // Unreachable while `self` holds a sender; never resolve rather than spin.
                return std::future::pending().await;
            };
            let Some(p) = self.procs.get_mut(index) else {
                continue;
            };
            if p.stop.is_none() {
                continue;
            }
            p.stop = None;
            let status = p.ended().await;
            return Exited {
                name: p.name.clone(),
                role: p.role,
                status,
                log: p.log.clone(),
            };
        }
    }

    /// Stop every child of `role` at once: SIGTERM, then SIGKILL after `grace`. Prints one line
    /// per child.
    pub async fn stop(&mut self, role: Role, grace: Duration) {
        let mut waiting = Vec::new();
        for p in self.procs.iter_mut().filter(|p| p.role == role) {
            if let Some(stop) = p.stop.take() {
                let _ = stop.send(grace);
            }
            waiting.push(p);
        }
        for p in waiting {
            let how = p.ended().await;
            println!(
                "  stopped {:<11} {:<7} pid {:<7} {how}",
                p.name, p.role, p.pid
            );
        }
    }

    /// Kill every child now (a second Ctrl-C).
    pub async fn stop_now(&mut self) {
        self.stop(Role::Sidecar, Duration::ZERO).await;
        self.stop(Role::App, Duration::ZERO).await;
    }
}

/// SIGTERM to a child's process group (the child and anything it started).
fn terminate(pid: u32) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw)
        && kill_process_group(pid, Signal::TERM).is_err()
    {
        let _ = kill_process(pid, Signal::TERM);
    }
}

/// The last `n` lines of a log file, for reporting a child that died.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// In a child of the demo: exit when the demo is gone (killed with SIGKILL, so it could not
/// stop us). A no-op outside the demo.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            if std::os::unix::process::parent_id() != parent {
                eprintln!("the demo (pid {parent}) is gone: exiting");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// SIGTERM or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
