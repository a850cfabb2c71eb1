//! Process helpers shared by the end-to-end tests that run the real binaries: where a
//! workspace binary is, how to start one and wait for its `listening on …` line, and a free
//! loopback port for a server that must come back on the same address.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A workspace binary. `cargo test --workspace` builds them all next to ours; when a single
/// package is tested, the missing one (whose package has the binary's name) is built first.
pub fn bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_sealgate"))
        .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", name])
            .status()
            .expect("cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
    }
    path
}

/// Spawn `cmd` with stderr appended to `log`, and wait for its one ready line
/// `listening on URL`; returns the child and the URL.
pub fn spawn_ready(mut cmd: Command, log: &Path) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// A free loopback port: the gateway must come back on the same address after a kill, and
/// the simulator must know where to send receipts before the gateway starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
