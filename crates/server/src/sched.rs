//! CPU priority of the async runtime's threads against the embedded store's writer.
//!
//! Why this exists: with the embedded SQLite store, every write of the process (accepts,
//! status changes, leases, receipts) goes through one connection, whose statements run one
//! after another on one thread of sqlx's. That thread is the serial part of the gateway; the
//! runtime's threads (HTTP handlers, JSON, hashing, delivery workers) are the parallel part.
//! When both cores are busy, the writer's wake-ups queue behind request handling and the
//! whole pipeline waits for them. Lowering the runtime's threads a few nice steps lets the
//! scheduler run the writer first whenever it is ready: measured on the 2-core VM, batch
//! accepts rose by 17 % (`bench accept`, five runs each in ABBA order;
//! `docs/performance.md`).
//!
//! What it must never do: raise any thread's priority (that needs privileges we must not
//! ask for), touch threads it did not find by name, or fail the gateway's start — a refused
//! change is logged and the gateway runs with the priorities it had. Linux only: elsewhere
//! the nice value is per process and there is nothing to separate.

/// The name prefix of tokio's runtime threads (`tokio-rt-worker`, `tokio-runtime-worker`,
/// as the kernel shows them, cut to 15 bytes).
pub const TOKIO_THREADS: &str = "tokio-";

/// Set every thread of this process whose name starts with `prefix` to `steps` nice steps
/// below the process's main thread, whichever thread calls (never back up: a thread already
/// lower stays as it is). Returns how many threads were lowered. Threads the runtime starts
/// later inherit the priority of the thread that starts them, so a runtime's threads stay
/// lowered.
#[cfg(target_os = "linux")]
pub fn lower_threads(prefix: &str, steps: i32) -> std::io::Result<usize> {
    use rustix::process::{Pid, getpid, getpriority_process, setpriority_process};

    if steps <= 0 {
        return Ok(0);
    }
    // The main thread's (its thread id is the process id), not the caller's: a caller on a
    // runtime thread lowered before would otherwise lower everything once more.
    let main = getpriority_process(Some(getpid()))?;
    let target = main.saturating_add(steps).min(19);
    let mut lowered = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        // A thread may end between the listing and the reads: skip it.
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        match getpriority_process(Some(tid)) {
            Ok(now) if now < target => {}
            _ => continue,
        }
        match setpriority_process(Some(tid), target) {
            Ok(()) => lowered += 1,
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(lowered)
}

/// Elsewhere priorities are per process: nothing to do.
#[cfg(not(target_os = "linux"))]
pub fn lower_threads(_prefix: &str, _steps: i32) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rustix::process::{Pid, getpriority_process};

    fn nice_of(tid: i32) -> i32 {
        getpriority_process(Pid::from_raw(tid)).expect("the thread's priority")
    }

    fn own_tid() -> i32 {
        rustix::thread::gettid().as_raw_nonzero().get()
    }

    /// The runtime's threads go down by the steps asked, once; a thread of another name and
    /// the calling thread keep their priority; a thread the runtime starts later inherits it.
    #[test]
    fn only_the_named_threads_go_down_and_only_once() {
        let base = getpriority_process(Some(rustix::process::getpid())).unwrap();
        let lowered = (base + 3).min(19);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("schedtest-rt")
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = std::thread::Builder::new()
            .name("schedtest-other".into())
            .spawn(move || {
                tx.send(own_tid()).unwrap();
                std::thread::park();
            })
            .unwrap();
        let other_tid = rx.recv().unwrap();
        let worker_tid = rt.block_on(async { tokio::spawn(async { own_tid() }).await.unwrap() });

        assert_eq!(lower_threads("schedtest-rt", 3).unwrap(), 2);
        assert_eq!(nice_of(worker_tid), lowered);
        assert_eq!(nice_of(other_tid), base, "a thread of another name");
        assert_eq!(
            getpriority_process(None).unwrap(),
            base,
            "the calling thread"
        );
        // Asked again (a second gateway in the same process), from a lowered runtime thread
        // as `Gateway::serve` in a spawned task does: nothing changes.
        let again = rt.block_on(async {
            tokio::spawn(async { lower_threads("schedtest-rt", 3).unwrap() })
                .await
                .unwrap()
        });
        assert_eq!(again, 0);
        assert_eq!(nice_of(worker_tid), lowered);
        // A blocking thread the runtime starts from a lowered worker inherits its priority.
        let blocking = rt.block_on(async {
            tokio::spawn(async {
                tokio::task::spawn_blocking(|| nice_of(own_tid()))
                    .await
                    .unwrap()
            })
            .await
            .unwrap()
        });
        assert_eq!(blocking, lowered);
        other.thread().unpark();
        other.join().unwrap();
    }
}
