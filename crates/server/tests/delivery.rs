//! Integration tests of the business send pipeline: a real `Gateway` (API + workers) on a
//! loopback port, the carrier simulator in-process as the phone network, and reqwest as the
//! tenant backend. One binary, one module per area.

mod support;

mod ds {
    #[allow(dead_code)]
    pub mod harness;
}

mod delivery {
    mod harness;

    mod batch;
    mod callbacks;
    mod idempotency;
    mod inapp;
    mod pipeline;
    mod webhook;
}
