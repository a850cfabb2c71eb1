//! Encrypted attachments end to end through the real binaries: `sealgate serve` and `seal send
//! --attach` / `seal recv --save-dir`, as a user would run them.
//!
//! Files at every chunk boundary and a 200 MiB file arrive byte-identical; an upload killed
//! half-way resumes in the next `seal` run; and neither the plaintext (a canary planted in
//! every file) nor the file name ever reaches the server's data folder or log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CANARY: &[u8] = b"CANARY-5d1e-attachment-plaintext-must-never-reach-the-server";
const NAME_CANARY: &str = "quarterly-secret-name-91c4";
const CHUNK: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;

fn sealgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sealgate"))
}

/// `seal` is another package's binary; `cargo test --workspace` builds it next to ours.
fn seal_bin() -> PathBuf {
    let path = sealgate_bin().with_file_name(format!("seal{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "seal"])
            .status()
            .expect("building seal");
        assert!(status.success(), "cargo build -p seal failed");
    }
    path
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(data: &Path, log: &Path) -> Server {
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = Command::new(sealgate_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("SEALGATE_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawning sealgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the ready line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_json(mut cmd: Command) -> Vec<Value> {
    let out = cmd.output().expect("running command");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{cmd:?}: bad JSON {l:?}: {e}")))
        .collect()
}

struct Device {
    home: PathBuf,
}

impl Device {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(seal_bin());
        cmd.arg("--home").arg(&self.home).args(args);
        cmd
    }

    fn seal(&self, args: &[&str]) -> Vec<Value> {
        run_json(self.command(args))
    }

    /// Receive (saving attachments into `dir`) until the mailbox is empty.
    fn drain_into(&self, dir: &Path) -> Vec<Value> {
        let dir = dir.to_str().expect("utf-8 path");
        let mut all = Vec::new();
        loop {
            let batch = self.seal(&["recv", "--wait", "1", "--save-dir", dir]);
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }
}

/// A tenant with alice and bob enrolled and initialised.
fn setup(tmp: &Path) -> (Server, Device, Device) {
    let data = tmp.join("server-data");
    let server = Server::start(&data, &tmp.join("server.log"));
    let admin = |args: &[&str]| {
        let mut cmd = Command::new(sealgate_bin());
        cmd.arg("admin").arg("--data").arg(&data).args(args);
        run_json(cmd).pop().expect("admin output")
    };
    let tenant = admin(&["tenant", "create", "acme"]);
    let tenant_id = tenant["tenant_id"].as_str().expect("tenant_id").to_owned();
    let [alice, bob] = ["alice", "bob"].map(|user| {
        let enroll = admin(&["enroll", "--tenant", &tenant_id, "--user", user]);
        let device = Device {
            home: tmp.join(format!("home-{user}")),
        };
        let token = enroll["token"].as_str().expect("token");
        device.seal(&["init", "--server", &server.url(), "--token", token]);
        device
    });
    (server, alice, bob)
}

/// `len` deterministic bytes with the canary planted once per MiB (where it fits).
fn write_file(path: &Path, len: usize) {
    let mut block = vec![0u8; MIB];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut written = 0;
    let mut index: u64 = 0;
    while written < len {
        let n = (len - written).min(MIB);
        let mut piece = block[..n].to_vec();
        piece[..n.min(8)].copy_from_slice(&index.to_le_bytes()[..n.min(8)]);
        if n >= 8 + CANARY.len() {
            piece[8..8 + CANARY.len()].copy_from_slice(CANARY);
        }
        file.write_all(&piece).expect("write");
        written += n;
        index += 1;
    }
    file.flush().expect("flush");
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open a"),
        std::fs::File::open(b).expect("open b"),
    );
    if fa.metadata().expect("meta").len() != fb.metadata().expect("meta").len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; MIB], vec![0u8; MIB]);
    loop {
        let n = fa.read(&mut ba).expect("read a");
        if n == 0 {
            return true;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let finder = memchr::memmem::Finder::new(needle);
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && finder.find(&bytes).is_some()
            {
                hits.push(path);
            }
        }
    }
    hits
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// The received attachment lines, by name.
fn saved(events: &[Value]) -> Vec<(String, u64, PathBuf, Option<String>)> {
    events
        .iter()
        .filter_map(|e| {
            let a = e.get("attachment")?;
            assert!(a.get("error").is_none(), "attachment not saved: {e}");
            assert!(
                e.get("cek").is_none() && a.get("cek").is_none(),
                "key printed: {e}"
            );
            Some((
                a["name"].as_str()?.to_owned(),
                a["size"].as_u64()?,
                PathBuf::from(a["path"].as_str()?),
                e.get("text").and_then(|t| t.as_str()).map(str::to_owned),
            ))
        })
        .collect()
}

#[test]
fn attachments_at_chunk_boundaries_arrive_intact_and_the_server_sees_no_plaintext() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, alice, bob) = setup(tmp.path());
    let outbox = tmp.path().join("outbox");
    let inbox = tmp.path().join("inbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 9 * MIB + 3];
    let mut conversation = String::new();
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("{NAME_CANARY}-{len}.bin");
        let path = outbox.join(&name);
        write_file(&path, len);
        let caption = format!("file {i}");
        let mut args = vec!["send", "--attach", path.to_str().expect("utf-8")];
        if conversation.is_empty() {
            args.extend(["--to", "bob"]);
        } else {
            args.extend(["--conversation", &conversation]);
        }
        args.push(&caption);
        let out = alice.seal(&args);
        assert_eq!(out[0]["size"], len as u64, "{out:?}");
        assert_eq!(out[0]["resumed_from"], 0);
        conversation = out[0]["conversation"]
            .as_str()
            .expect("conversation")
            .to_owned();
    }
    let events = bob.drain_into(&inbox);
    let got = saved(&events);
    assert_eq!(got.len(), sizes.len(), "{events:?}");
    for ((name, size, path, text), (i, &len)) in got.iter().zip(sizes.iter().enumerate()) {
        assert_eq!(name, &format!("{NAME_CANARY}-{len}.bin"));
        assert_eq!(*size, len as u64);
        assert_eq!(text.as_deref(), Some(format!("file {i}").as_str()));
        assert_eq!(path.parent(), Some(inbox.as_path()));
        assert!(same_contents(path, &outbox.join(name)), "{name} differs");
    }

    // The same file again: saved next to the first, never over it.
    let first = outbox.join(format!("{NAME_CANARY}-1.bin"));
    alice.seal(&[
        "send",
        "--conversation",
        &conversation,
        "--attach",
        first.to_str().expect("utf-8"),
    ]);
    let again = saved(&bob.drain_into(&inbox));
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].2,
        inbox.join(format!("{NAME_CANARY}-1 (1).bin")),
        "a second copy gets a suffix"
    );
    assert!(same_contents(&again[0].2, &first));
    assert!(same_contents(
        &inbox.join(format!("{NAME_CANARY}-1.bin")),
        &first
    ));

    // Without --save-dir, an attachment is listed (no key, no path) and not saved.
    alice.seal(&[
        "send",
        "--conversation",
        &conversation,
        "--attach",
        first.to_str().expect("utf-8"),
    ]);
    let listed = bob.seal(&["recv", "--wait", "2"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0]["attachment"]["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("blake3:"))
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
        "the digest names its algorithm: {listed:?}"
    );
    assert!(listed[0]["attachment"].get("cek").is_none());

    drop(server);
    let data = tmp.path().join("server-data");
    assert!(
        count_files(&data.join("blobs")) >= sizes.len(),
        "blobs are stored in the data folder"
    );
    let leaked = files_containing(&data, CANARY);
    assert!(leaked.is_empty(), "plaintext canary found in {leaked:?}");
    let named = files_containing(&data, NAME_CANARY.as_bytes());
    assert!(
        named.is_empty(),
        "a file name reached the server: {named:?}"
    );
    let log = std::fs::read(tmp.path().join("server.log")).expect("log");
    assert!(!log.is_empty());
    assert!(memchr::memmem::find(&log, CANARY).is_none());
    assert!(memchr::memmem::find(&log, NAME_CANARY.as_bytes()).is_none());
}

#[test]
fn a_killed_upload_resumes_and_arrives_byte_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, alice, bob) = setup(tmp.path());
    let conversation = alice.seal(&["send", "--to", "bob", "hello"])[0]["conversation"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let big = tmp.path().join("big.bin");
    let len = 200 * MIB;
    write_file(&big, len);
    let parts = tmp.path().join("server-data/blobs/parts");

    // Start the upload and kill -9 the client once a few parts are stored.
    let mut child = alice
        .command(&[
            "send",
            "--conversation",
            &conversation,
            "--attach",
            big.to_str().expect("utf-8"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn seal");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_files(&parts) < 3 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "seal finished before it was killed"
        );
        assert!(Instant::now() < deadline, "the upload made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let stored = count_files(&parts);
    assert!(
        stored < len / (4 * MIB),
        "killed too late: {stored} parts stored"
    );

    // The next run resumes from the gateway's offset instead of starting over.
    let out = alice.seal(&[
        "send",
        "--conversation",
        &conversation,
        "--attach",
        big.to_str().expect("utf-8"),
    ]);
    let resumed = out[0]["resumed_from"].as_u64().expect("resumed_from");
    // At least the parts stored before the kill (one file may have been a part in flight),
    // at a chunk boundary, and not the whole file.
    assert!(resumed >= 2 * 4_000_000, "resumed from {resumed}");
    assert_eq!(
        resumed % (CHUNK as u64 + 16),
        0,
        "resumed off a chunk boundary"
    );
    assert!(resumed < len as u64, "resumed from {resumed}");

    let inbox = tmp.path().join("inbox");
    let got = saved(&bob.drain_into(&inbox));
    assert_eq!(got.len(), 1, "exactly one attachment arrives: {got:?}");
    assert_eq!(got[0].1, len as u64);
    assert!(same_contents(&got[0].2, &big), "the resumed file differs");
    drop(server);
}
