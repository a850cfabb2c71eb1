//! Support code shared by the `sealgate` binaries and benches: the HTTP load generator used by
//! `sealgate-load` and by the accept benchmark, and the raw store-insert ceiling the benchmark
//! compares against. Never part of the server's request path — except the global allocator:
//! every binary, bench and test of this crate (the `sealgate` server among them) allocates
//! through mimalloc, which spends markedly less time than glibc's malloc on the gateway's
//! many short-lived, cross-thread buffers (request bodies handed to SQLite's thread).

#![forbid(unsafe_code)]

pub mod load;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
