//! The UDP transfer's protocol with no I/O: the sender and the receiver are state machines
//! that take `now` and datagrams, and give back datagrams to send and when they next need
//! to run (quinn-proto's model: `handle`, `poll_transmit`, `poll_timeout`). They read no
//! clock and touch no socket or file, so the tests drive both ends in virtual time through
//! a simulated link (`sim`). The datagram layout ([`super::wire`]) and the rate controller
//! ([`super::rate`]) are pure too.
//!
//! - [`sender`]: the serving box's side: proving the receiver, pacing, resends;
//! - [`receiver`]: the downloading box's side: checking datagrams, reports, time-outs;
//! - [`chunks`]: the receiver's bitset of chunks that arrived.

pub mod chunks;
pub mod receiver;
pub mod sender;

#[cfg(test)]
mod sim;
