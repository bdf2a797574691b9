//! Owns a gateway run as its own OS process (the real `amqp-gateway` binary), for what an
//! in-process [`super::TestGateway`] cannot show: a crash (SIGKILL: sockets reset, nothing
//! drained) and shutdown by signal (SIGTERM).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for integration tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_amqp-gateway");

/// A gateway process.
pub struct GatewayProcess {
    /// Public listener.
    pub addr: SocketAddr,
    /// `http://` + `addr`.
    pub url: String,
    /// `http://` + the admin listener.
    pub admin_url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl GatewayProcess {
    /// Writes `config` (TOML; its `[server]` table must use `{listen}` and `{admin}` for the
    /// two addresses, which are filled with free loopback ports) and starts the binary on it;
    /// waits up to 20 s for `/readyz` to answer 200. Logs go to a file, shown on failure.
    pub async fn start(config: &str) -> GatewayProcess {
        Self::start_with(config, &[]).await
    }

    /// Like [`GatewayProcess::start`], with extra command-line arguments (e.g. `--log-format`).
    pub async fn start_with(config: &str, args: &[&str]) -> GatewayProcess {
        let dir = std::env::temp_dir().join(super::unique_name("gateway-proc"));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let config = config
            .replace("{listen}", &addr.to_string())
            .replace("{admin}", &admin.to_string());
        let path = dir.join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BINARY}: {e}"));
        let mut gw = GatewayProcess {
            addr,
            url: format!("http://{addr}"),
            admin_url: format!("http://{admin}"),
            dir,
            child: Some(child),
        };
        gw.wait_ready(Duration::from_secs(20)).await;
        gw
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("gateway process exited with {status}:\n{}", self.log());
            }
            if let Ok(r) = client
                .get(format!("{}/readyz", self.admin_url))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "gateway process not ready within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// SIGKILL: no drain, no goodbye; in-flight requests lose their connection.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (on the blocking pool) up to `timeout` for a clean exit; returns
    /// whether it exited with status 0.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            while started.elapsed() < timeout {
                if let Ok(Some(status)) = child.try_wait() {
                    return status.success();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            false
        })
        .await
        .unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
