//! `shoal-tests`: the cluster harness that runs real `shoal` processes; later the chaos suite
//! and the convergence benchmark.
//!
//! What it offers:
//!
//! - [`shoal_bin`]: the path of the `shoal` binary under test.
//! - [`Process`]: a child process that is killed (SIGKILL, by pid) and reaped when dropped,
//!   also when a test panics.
//! - [`DevCluster`]: `shoal dev-cluster` in a temporary directory on free loopback ports,
//!   with access to each node's pid, config and log; dropping it kills the supervisor and
//!   every node process it or the test started.
//! - [`wait_until`]: polls a condition up to a generous deadline; tests never sleep a fixed
//!   time.
//!
//! **Which binary.** `CARGO_BIN_EXE_shoal` exists only for the `shoal-node` package's own
//! tests, so this crate finds the binary itself: `$SHOAL_BIN` if set, else `shoal` in the
//! target directory the test executable runs from (`target/debug/deps/…` → `target/debug/shoal`).
//! `cargo test --workspace` (what `scripts/test` runs) builds it before any test runs; with
//! `cargo test -p shoal-tests` alone, build it first (`cargo build -p shoal-node --bin shoal`),
//! or a stale binary is tested.

pub mod chaos;
mod cluster;
pub mod convergence;
mod process;
pub mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use cluster::DevCluster;
pub use process::{Process, alive, send_signal};

/// The `shoal` binary under test; see the crate docs. Panics with the fix if it is missing.
pub fn shoal_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> → target/<profile>/shoal
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("shoal"))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p shoal-node --bin shoal` \
         (or run `cargo test --workspace`), or set SHOAL_BIN",
        path.display()
    );
    path
}

/// Polls `condition` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the Prometheus sample whose line starts with `series` (the metric name and
/// its labels exactly as rendered) in the text of a `/metrics` page.
pub fn metric_sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET path` over HTTP/1.1 to `addr` (an admin endpoint): the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {response}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
