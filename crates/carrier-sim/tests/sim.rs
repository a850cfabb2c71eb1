//! Integration tests of the carrier simulator, in process on 127.0.0.1:0 (one test runs the
//! real binary). One test binary, one module per area.

// A panic is the failure report in tests (see clippy.toml); `allow-unwrap-in-tests` covers only
// `#[test]` fns, not the harness helpers they share.
#![allow(clippy::unwrap_used)]

#[path = "sim/binary.rs"]
mod binary;
#[path = "sim/common.rs"]
mod common;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/numbers.rs"]
mod numbers;
#[path = "sim/receipts.rs"]
mod receipts;
#[path = "sim/sends.rs"]
mod sends;
