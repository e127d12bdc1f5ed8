//! STOMP 1.0, 1.1 and 1.2.
//!
//! STOMP frames become core operations: SEND a publish, SUBSCRIBE a consume,
//! ACK / NACK a settle, and deliveries come back as MESSAGE frames; the
//! destination mapping follows DESIGN.md. The adapter that does this (connection
//! state, heart-beats, receipts, transactions) comes later; for now this
//! module holds the frame types and the codec.

pub mod codec;
mod escape;
pub mod frame;
