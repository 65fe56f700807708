//! Herald wire protocol: sans-IO frame codec, credentials, payloads, the
//! gateway↔control-plane link messages and the terminal/server session state
//! machines.
//!
//! Nothing in this crate performs I/O, reads a clock or depends on a runtime:
//! time is passed in as `now`. The gateway, the control plane, the load
//! generator and the tests all speak the protocol through these types.
//! The byte-exact specification lives in `PROTOCOL.md` next to this crate.

pub mod code;
pub mod condition;
pub mod credential;
pub mod frame;
pub mod link;
pub mod mqtt;
pub mod payload;
pub mod server;
pub mod session;

pub use code::CloseCode;
pub use frame::{DecodeError, Decoder, Frame};
