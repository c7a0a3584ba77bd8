//! The real `quiverctl` binary, run against a test server with its admin token.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use super::TestServer;

pub struct Ctl {
    pub server: String,
    pub token: String,
}

impl Ctl {
    pub fn new(server: &TestServer) -> Self {
        Self {
            server: server.url.clone(),
            token: server.admin.clone(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiverctl"));
        cmd.args(args)
            .env("QUIVER_SERVER", &self.server)
            .env("QUIVER_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub async fn run(&self, args: &[&str], stdin: Option<String>) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("quiverctl runs");
            let mut pipe = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                pipe.write_all(s.as_bytes()).unwrap();
            }
            drop(pipe);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        assert!(
            out.status.success(),
            "quiverctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn ok_stdin(&self, args: &[&str], stdin: String) -> String {
        let out = self.run(args, Some(stdin)).await;
        assert!(
            out.status.success(),
            "quiverctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; the standard error.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        assert!(!out.status.success(), "quiverctl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs with `stdin` and expects failure; the standard error.
    pub async fn fails_stdin(&self, args: &[&str], stdin: String) -> String {
        let out = self.run(args, Some(stdin)).await;
        assert!(!out.status.success(), "quiverctl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}
