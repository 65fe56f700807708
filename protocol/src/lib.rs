//! Herald wire protocol: sans-IO frame codec, credentials, payloads.
//!
//! Nothing in this crate performs I/O. The gateway, control plane, load
//! generator and tests all speak the protocol through these types.

pub mod code;
pub mod credential;
pub mod frame;
pub mod payload;

pub use code::CloseCode;
pub use frame::{Decoder, DecodeError, Frame};
