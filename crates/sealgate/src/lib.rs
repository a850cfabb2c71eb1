//! Support code shared by the `sealgate` binaries and benches: the HTTP load generator used by
//! `sealgate-load` and by the accept benchmark, and the raw store-insert ceiling the benchmark
//! compares against. Never part of the server's request path.

#![forbid(unsafe_code)]

pub mod load;
