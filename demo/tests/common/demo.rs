//! `quiver-demo` as a child process on free ports, its output read line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo process; killed (with its children, which follow their parent) if the test fails.
pub struct Demo {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// `quiver-demo demo --port-base 0 --dir <temp> <args>` (the README's command).
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_quiver-demo"))
            .args(["demo", "--port-base", "0"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quiver-demo");
        let (tx, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (stream, tag) in [
            (Box::new(out) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(err), "stderr: "),
        ] {
            let (tx, seen) = (tx.clone(), seen.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    seen.lock()
                        .expect("output lock")
                        .push(format!("{tag}{line}"));
                    let _ = tx.send(format!("{tag}{line}"));
                }
            });
        }
        Self {
            child,
            lines,
            seen,
            _dir: dir,
        }
    }

    /// Everything it printed so far (stderr lines prefixed `stderr: `).
    pub fn output(&self) -> String {
        self.seen.lock().expect("output lock").join("\n")
    }

    /// Read output lines until `pick` returns Some.
    pub fn until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        pick: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = pick(&line) {
                        return v;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no {what} within {timeout:?} (demo exit status: {status:?}); output:\n{}",
                        self.output()
                    );
                }
            }
        }
    }

    /// Ctrl-C, as a user stops it: the demo must exit 0 within 60 s.
    pub async fn stop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within 60s of SIGINT:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Let the reader threads catch the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            status.success(),
            "demo exit status {status:?}:\n{}",
            self.output()
        );
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
