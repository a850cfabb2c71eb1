//! Integration tests of the gateway's directory and HTTP surface, against a real `Gateway`
//! served on a loopback port and talked to with reqwest. One binary, one module per area.

mod support;

mod api {
    mod bad_input;
    mod directory;
    mod keypackages;
    mod model;
    mod surface;
}
