//! The real `jisu serve` binary as a child process, for tests that kill, stop or
//! restart it.
use std::time::Duration;

use jisu::{
    client::{ClientConfig, JisuClient},
    security::jwt::TokenIssuer,
};

/// A `jisu serve` process, killed on drop.
pub struct Served {
    child: std::process::Child,
    pub addr: String,
    pub metrics_addr: String,
    /// The debug pages' `host:port`.
    pub debug_addr: String,
    _dir: tempfile::TempDir,
    pub certs: std::path::PathBuf,
    /// Its log lines (stderr), when captured.
    pub logs: Option<std::sync::mpsc::Receiver<String>>,
}

impl Served {
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGKILL: the process dies without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client with the `client` certificate and a token for `scopes`.
    pub async fn client(&self, scopes: &str) -> JisuClient {
        let token = TokenIssuer::from_file(&self.certs.join("jwt.key"), "jisu", "jisucloud")
            .unwrap()
            .issue("tester", scopes, Duration::from_secs(300));
        let config = ClientConfig::from_certs_dir(&self.endpoint(), &self.certs, "client")
            .unwrap()
            .with_token(token);
        JisuClient::connect(config).await.unwrap()
    }

    /// Waits (bounded) for a log line containing `needle`.
    #[track_caller]
    pub fn log_line(&self, needle: &str) -> String {
        let logs = self.logs.as_ref().expect("logs captured");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start the real binary.
#[derive(Default)]
pub struct Binary<'a> {
    env: Vec<(&'a str, String)>,
    args: Vec<String>,
    certs: Option<std::path::PathBuf>,
    logs: bool,
    listen: Option<String>,
    data_dir: Option<std::path::PathBuf>,
}

impl<'a> Binary<'a> {
    pub fn env(mut self, key: &'a str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.args.extend(args.map(String::from));
        self
    }
    /// Use this (existing) certs dir instead of letting `serve` create one.
    pub fn certs(mut self, dir: &std::path::Path) -> Self {
        self.certs = Some(dir.to_owned());
        self
    }
    /// Listen on this address instead of port 0 (to restart a replica where it was).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_owned());
        self
    }
    /// Keep data here (to restart a replica on the same database).
    pub fn data_dir(mut self, dir: &std::path::Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }
    /// Capture stderr (the logs) line by line.
    pub fn logs(mut self) -> Self {
        self.logs = true;
        self
    }

    /// Starts `jisu serve` on port 0 (gRPC and metrics); returns once it prints its
    /// "serving" line.
    pub fn start(self) -> Served {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let certs = self
            .certs
            .clone()
            .unwrap_or_else(|| dir.path().join("certs"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
            .args(["serve", "--metrics-listen", "127.0.0.1:0"])
            .args(["--debug-listen", "127.0.0.1:0", "--listen"])
            .arg(self.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .args(["--demo-data", "--init-certs", "--certs"])
            .arg(&certs)
            .arg("--data-dir")
            .arg(
                self.data_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("data")),
            )
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(if self.logs {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .spawn()
            .unwrap();
        let logs = child.stderr.take().map(|stderr| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // Bytes, not `lines()`: one line that is not UTF-8 must not stop the
                // reader (the server would then block on a full pipe).
                let mut reader = std::io::BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            rx
        });
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut metrics_addr = String::new();
        let mut debug_addr = String::new();
        let addr = loop {
            let line = lines
                .next()
                .expect("jisu serve exited before serving")
                .unwrap();
            if let Some(m) = line.strip_prefix("jisu: serving metrics on http://") {
                metrics_addr = m.trim_end_matches("/metrics").to_owned();
            }
            if let Some(d) = line.strip_prefix("jisu: serving debug pages on http://") {
                debug_addr = d.trim_end_matches("/debug/traces").to_owned();
            }
            if let Some(addr) = line.strip_prefix("jisu: serving gRPC on ") {
                break addr.to_owned();
            }
        };
        Served {
            child,
            addr,
            metrics_addr,
            debug_addr,
            _dir: dir,
            certs,
            logs,
        }
    }
}

/// Starts the real binary with a certs dir that does not exist yet, so `serve` creates the
/// development certificates itself.
pub fn serve_binary(env: &[(&str, &str)]) -> Served {
    env.iter()
        .fold(Binary::default(), |b, (k, v)| b.env(k, *v))
        .start()
}

/// `jisu trace ARGS --debug-addr ADDR`: exit code, stdout, stderr.
pub fn jisu_trace(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
        .arg("trace")
        .args(args)
        .args(["--debug-addr", addr])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
