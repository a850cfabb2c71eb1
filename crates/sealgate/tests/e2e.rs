//! End to end through the real binaries: `sealgate serve` and `seal`, as a user would run them.
//!
//! Three (then five) users on one tenant: 1:1 and group conversations, add and remove, two
//! concurrent commits, a server restart and client restarts (every `seal` call is a fresh
//! process), exactly-once delivery to each device, and a plaintext canary that must never
//! reach the server's data folder or its logs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CANARY: &str = "CANARY-7f3a9c1e-plaintext-must-never-reach-the-server";

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
    fn start(data: &Path, log: &Path, listen: &str) -> Server {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut child = Command::new(sealgate_bin())
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            // Debug logging makes the canary check stricter: more chances to leak.
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

    /// SIGTERM and wait: the server must stop gracefully and by itself.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "sealgate exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sealgate did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

fn admin(data: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(sealgate_bin());
    cmd.arg("admin").arg("--data").arg(data).args(args);
    run_json(cmd).pop().expect("admin output")
}

struct Device {
    user: String,
    home: PathBuf,
}

impl Device {
    fn seal(&self, args: &[&str]) -> Vec<Value> {
        let mut cmd = Command::new(seal_bin());
        cmd.arg("--home").arg(&self.home).args(args);
        run_json(cmd)
    }

    fn spawn(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(seal_bin());
        cmd.arg("--home").arg(&self.home).args(args);
        cmd
    }

    /// Receive until the mailbox is empty.
    fn drain(&self) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let batch = self.seal(&["recv", "--wait", "1"]);
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }
}

fn texts(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| {
            Some((
                e.get("from")?.as_str()?.to_owned(),
                e.get("text")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn members(device: &Device, conversation: &str) -> Vec<String> {
    let convs = device.seal(&["conversations"]);
    let conv = convs
        .iter()
        .find(|c| c["conversation"] == conversation)
        .unwrap_or_else(|| {
            panic!(
                "{} has no conversation {conversation}: {convs:?}",
                device.user
            )
        });
    let mut m: Vec<String> = conv["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|v| v.as_str().expect("member").to_owned())
        .collect();
    m.sort();
    m.dedup();
    m
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path);
            }
        }
    }
    hits
}

/// (name, nice) of every thread of process `pid`, from `/proc`.
#[cfg(target_os = "linux")]
fn thread_priorities(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            // `pid (name) state …`: the name may hold spaces; nice is field 19.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
}

#[test]
fn conversations_end_to_end_through_the_binaries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("server-data");
    let log = tmp.path().join("server.log");
    let mut server = Server::start(&data, &log, "127.0.0.1:0");
    let addr = server.addr.to_string();

    // The embedded store's writer runs ahead of the request threads (`store.runtime_nice`,
    // 10 by default): the runtime's threads sit 10 nice steps below the main thread, the
    // SQLite threads opened with the store stay at its priority.
    #[cfg(target_os = "linux")]
    {
        let threads = thread_priorities(server.child.id());
        let main = threads
            .iter()
            .find(|(n, _)| n == "sealgate")
            .expect("main")
            .1;
        let runtime: Vec<i64> = threads
            .iter()
            .filter(|(n, _)| n.starts_with("tokio-"))
            .map(|t| t.1)
            .collect();
        assert!(
            !runtime.is_empty() && runtime.iter().all(|&n| n == (main + 10).min(19)),
            "{threads:?}"
        );
        assert!(
            threads
                .iter()
                .any(|(n, nice)| n.starts_with("sqlx-sqlite") && *nice == main),
            "{threads:?}"
        );
    }

    // Tenant and enrollment, scriptable with JSON output.
    let tenant = admin(&data, &["tenant", "create", "acme"]);
    let tenant_id = tenant["tenant_id"].as_str().expect("tenant_id").to_owned();
    assert!(
        tenant["api_key"]
            .as_str()
            .expect("api_key")
            .starts_with("sgk_")
    );

    let mut devices = BTreeMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let enroll = admin(&data, &["enroll", "--tenant", &tenant_id, "--user", user]);
        let token = enroll["token"].as_str().expect("token");
        let device = Device {
            user: user.to_owned(),
            home: tmp.path().join(format!("home-{user}")),
        };
        let init = device.seal(&["init", "--server", &server.url(), "--token", token]);
        assert_eq!(init[0]["user"], user);
        devices.insert(user, device);
    }
    let [alice, bob, carol, dave, erin] =
        ["alice", "bob", "carol", "dave", "erin"].map(|u| &devices[u]);

    // An enrollment token works once.
    let zed = admin(&data, &["enroll", "--tenant", "acme", "--user", "zed"]);
    let token = zed["token"].as_str().expect("token");
    let init = |home: &str| {
        Command::new(seal_bin())
            .arg("--home")
            .arg(tmp.path().join(home))
            .args(["init", "--server", &server.url(), "--token", token])
            .output()
            .expect("seal init")
    };
    assert!(
        init("home-zed").status.success(),
        "first use of a token works"
    );
    let again = init("home-zed-2");
    assert!(
        !again.status.success(),
        "a used enrollment token must be refused"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("invalid_enrollment_token"),
        "the refusal names its code: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    // 1:1.
    let sent = alice.seal(&["send", "--to", "bob", &format!("hi bob {CANARY}")]);
    let direct = sent[0]["conversation"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let got = bob.drain();
    assert_eq!(
        texts(&got),
        vec![("alice".to_owned(), format!("hi bob {CANARY}"))],
        "bob's events: {got:?}"
    );
    bob.seal(&["send", "--conversation", &direct, "hi alice"]);
    assert_eq!(
        texts(&alice.drain()),
        vec![("bob".to_owned(), "hi alice".to_owned())]
    );

    // Group of three.
    let created = alice.seal(&["group", "create", "--members", "bob,carol"]);
    let group = created[0]["conversation"]
        .as_str()
        .expect("conversation")
        .to_owned();
    alice.seal(&[
        "send",
        "--conversation",
        &group,
        &format!("group one {CANARY}"),
    ]);
    for d in [bob, carol] {
        let ev = d.drain();
        assert!(
            ev.iter()
                .any(|e| e["event"] == "joined" && e["conversation"] == group.as_str()),
            "{} should report joining: {ev:?}",
            d.user
        );
        assert_eq!(
            texts(&ev),
            vec![("alice".to_owned(), format!("group one {CANARY}"))]
        );
    }

    // Server restart in the middle: same data, same address.
    server.stop();
    server = Server::start(&data, &log, &addr);
    carol.seal(&["send", "--conversation", &group, "after restart"]);
    for d in [alice, bob] {
        assert_eq!(
            texts(&d.drain()),
            vec![("carol".to_owned(), "after restart".to_owned())]
        );
    }

    // Two concurrent commits: bob adds dave while carol adds erin. One wins the epoch; the other
    // client recovers and its change lands in the next epoch.
    let mut add_dave = bob.spawn(&["group", "add", "--conversation", &group, "--member", "dave"]);
    let mut add_erin = carol.spawn(&["group", "add", "--conversation", &group, "--member", "erin"]);
    let (h1, h2) = (
        std::thread::spawn(move || add_dave.output().expect("seal")),
        std::thread::spawn(move || add_erin.output().expect("seal")),
    );
    for out in [h1.join().expect("join"), h2.join().expect("join")] {
        assert!(
            out.status.success(),
            "concurrent add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut roster_events = BTreeMap::new();
    for d in [alice, bob, carol, dave, erin] {
        roster_events.insert(d.user.clone(), d.drain());
    }
    let everyone: Vec<String> = ["alice", "bob", "carol", "dave", "erin"]
        .map(String::from)
        .to_vec();
    for d in [alice, bob, carol, dave, erin] {
        assert_eq!(
            members(d, &group),
            everyone,
            "{} sees the wrong roster",
            d.user
        );
    }
    dave.seal(&[
        "send",
        "--conversation",
        &group,
        &format!("dave here {CANARY}"),
    ]);
    for d in [alice, bob, carol, erin] {
        assert_eq!(
            texts(&d.drain()),
            vec![("dave".to_owned(), format!("dave here {CANARY}"))],
            "{} after the concurrent adds",
            d.user
        );
    }

    // Remove: carol is told, and cannot read what follows.
    alice.seal(&[
        "group",
        "remove",
        "--conversation",
        &group,
        "--member",
        "carol",
    ]);
    let carol_ev = carol.drain();
    assert!(
        carol_ev.iter().any(|e| e["event"] == "removed"),
        "carol should learn she was removed: {carol_ev:?}"
    );
    alice.seal(&["send", "--conversation", &group, "carol cannot read this"]);
    assert!(
        texts(&carol.drain()).is_empty(),
        "a removed member got a later message"
    );
    for d in [bob, dave, erin] {
        let ev = d.drain();
        assert!(
            ev.iter()
                .any(|e| e["event"] == "member_removed" && e["member"] == "carol"),
            "{} should see carol's removal: {ev:?}",
            d.user
        );
        assert_eq!(
            texts(&ev),
            vec![("alice".to_owned(), "carol cannot read this".to_owned())]
        );
    }

    // Nothing is delivered twice: a further receive finds every mailbox empty.
    for d in [alice, bob, carol, dave, erin] {
        assert!(d.drain().is_empty(), "{} got a late duplicate", d.user);
    }

    server.stop();

    // The canary never reached the server: not in the database, the WAL, any file, or its log.
    let leaked = files_containing(&data, CANARY.as_bytes());
    assert!(leaked.is_empty(), "plaintext canary found in {leaked:?}");
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !log_text.is_empty(),
        "the server logged nothing; the canary check would be empty"
    );
    assert!(
        !log_text.contains(CANARY),
        "plaintext canary found in the server log"
    );
    // ... while the clients' own (encrypted) stores are the only place it lives, and not in clear.
    let client_leaks = files_containing(tmp.path().join("home-bob").as_path(), CANARY.as_bytes());
    assert!(
        client_leaks.is_empty(),
        "the key store holds plaintext: {client_leaks:?}"
    );
}
