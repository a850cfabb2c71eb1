//! End-to-end tests of the SDK against an in-process gateway on 127.0.0.1:0.
//!
//! One test binary, one module per area. Each test starts its own gateway and device homes in
//! temporary folders, so tests run in parallel without sharing state.

#[path = "sdk/common.rs"]
mod common;
#[path = "sdk/conversations.rs"]
mod conversations;
#[path = "sdk/delivery.rs"]
mod delivery;
#[path = "sdk/races.rs"]
mod races;
