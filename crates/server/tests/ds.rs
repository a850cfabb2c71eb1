//! Integration tests of the MLS delivery service against a real `Gateway` served on a
//! loopback port, with real mls-rs clients as the devices. One binary, one module per area.

mod support;

mod ds {
    mod harness;

    mod commits;
    mod groups;
    mod mailbox;
    mod messages;
    mod restart;
}
