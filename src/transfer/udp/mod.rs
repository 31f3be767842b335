//! Downloads over UDP: negotiated on the box's TCP connection, data in paced datagrams,
//! each authenticated and encrypted under keys the TCP connection exports for that
//! transfer, selective resends of exactly what was lost, and rate control that tells
//! random loss from congestion. docs/protocol.md describes the datagrams.
//!
//! The protocol is a pure core and thin drivers. The core decides everything (which
//! datagram goes when, what is lost, when a transfer has failed) from `now` and the
//! datagrams handed to it, so it is tested end to end in virtual time; the drivers only
//! move datagrams between it and the sockets, the clock and the files.
//!
//! - [`proto`]: the sans-IO sender and receiver state machines, and their simulated link;
//! - [`wire`]: plaintext datagram layout and integrity check;
//! - [`seal`]: per-transfer keys from the TCP connection, sealing and opening every
//!   datagram (AES-256-GCM), the replay window, and the counts of what was dropped;
//! - [`rate`]: the rate controller;
//! - [`sender`]: the driver of the serving box's side of one transfer;
//! - [`receiver`]: the downloading box's side: negotiation, the driver, the partial file;
//! - [`hub`]: the server's UDP socket, shared by all transfers, and their limits;
//! - [`serve`]: the serving box's handling of the TCP negotiation;
//! - [`socket`]: batched, offloaded UDP sends and receives.

pub mod hub;
pub mod proto;
pub mod rate;
pub mod receiver;
pub mod seal;
pub mod sender;
pub mod serve;
pub mod socket;
pub mod wire;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::TransferError;
use crate::share::ShareError;

/// Why a UDP download failed.
#[derive(Debug, Error)]
pub enum UdpError {
    /// What can fail in any transfer.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Not a single datagram arrived: UDP is blocked on the path.
    #[error("no UDP datagram arrived within {0:?}: UDP looks blocked (a firewall?)")]
    Blocked(Duration),
    /// Datagrams stopped arriving.
    #[error("UDP transfer made no progress for {0:?}")]
    Stalled(Duration),
}

impl From<proto::receiver::Failure> for UdpError {
    fn from(failure: proto::receiver::Failure) -> UdpError {
        match failure {
            proto::receiver::Failure::Blocked(waited) => UdpError::Blocked(waited),
            proto::receiver::Failure::Stalled(waited) => UdpError::Stalled(waited),
        }
    }
}

impl From<ShareError> for UdpError {
    fn from(error: ShareError) -> UdpError {
        UdpError::Transfer(TransferError::Local(error))
    }
}

/// The token as it travels in JSON: 32 hex digits.
pub fn format_token(token: &wire::Token) -> String {
    crate::share::hash::to_hex(token)
}

/// Reads a token back from its hex form.
pub fn parse_token(text: &str) -> Option<wire::Token> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut token = [0u8; 16];
    for (i, byte) in token.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(token)
}

/// The fields of `udp_finish`: the client's end of a UDP transfer (complete or not), on the
/// TCP connection that negotiated it. The transfer itself writes and reads it, so it lives
/// here; [`crate::requests::Request::UdpFinish`] carries the same fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpFinish {
    /// The session, 16 hex digits.
    pub session: String,
}

/// What a client may send on the TCP connection while its UDP transfer runs: `udp_finish`,
/// or any other request (refused: the transfer is not over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum DuringTransfer {
    /// The transfer's end.
    UdpFinish(UdpFinish),
    /// Any other request.
    #[serde(other)]
    Other,
}

impl crate::protocol::decode::Message for DuringTransfer {}
