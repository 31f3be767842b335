//! The serving box's handling of a `download_udp` request on a TCP connection: hash, open,
//! derive the transfer's keys from the connection, start a sending session, announce it,
//! and wait on the same connection for the client's `udp_finish`. A session that ends by
//! itself before that (its client never proved itself, or fell silent) frees its slot at
//! once, and the client is told so with an `unavailable` error.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use super::hub::UdpHub;
use super::proto::sender::{End, HELLO_TIMEOUT, SILENCE_TIMEOUT};
use super::seal::{self, TransferKeys};
use super::sender::SenderPlan;
use super::wire::{CHUNK_LEN, Token};
use super::{DuringTransfer, UdpFinish};
use crate::protocol::{Connection, ConnectionError, ErrorKind, Link, Response};
use crate::share::folder::{self, Fingerprint};
use crate::share::{DigestSet, RelPath, Share, ShareError};
use crate::transfer::delta::BlockRanges;
use crate::transfer::send_within;
use crate::types::FileVersion;

/// Longest wait for the client to take one of the session's control messages
/// (`udp_ready`, `udp_end`, an error) on the TCP connection.
const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client has to send `udp_finish` once its receiver reported having
/// everything (it sends it at once).
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client asked of a UDP download beyond the file.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The client's cap on the sending rate, bytes per second.
    pub max_rate: Option<u64>,
    /// Which digests the client wants.
    pub digests: DigestSet,
    /// Only these blocks of this version (checked for order by the caller).
    pub ranges: Option<BlockRanges>,
}

/// Serves one UDP download. The outer `Err` means the TCP connection failed; the inner
/// result is the request's outcome, for the log.
pub async fn serve_download(
    connection: &mut Connection<Link>,
    share: &Arc<Share>,
    hub: &Arc<UdpHub>,
    rel: &RelPath,
    wanted: Wanted,
    client_ip: IpAddr,
) -> Result<Result<FileVersion, String>, ConnectionError> {
    let Wanted {
        max_rate,
        digests,
        ranges,
    } = wanted;
    let _guard = share.locks().read(rel).await;
    let prepared = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        tokio::task::spawn_blocking(move || {
            share.check_served(&rel)?;
            let hash = share.hash_cache().hash_file(share.root(), &rel, digests)?;
            let (file, meta) = folder::open_regular(share.root(), &rel)?;
            if meta.len() != hash.size || folder::modified(&meta) != hash.mtime {
                return Err(ShareError::Changed(rel.clone()));
            }
            // Blocks of a version: still that version, and inside it.
            if let Some(ranges) = &ranges {
                let beyond = ranges
                    .ranges
                    .last()
                    .is_some_and(|[offset, len]| offset + len > meta.len());
                if *ranges.blake3 != *hash.blake3 || beyond {
                    return Err(ShareError::Changed(rel.clone()));
                }
            }
            Ok((hash, file, meta, ranges))
        })
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", std::io::Error::other(e))))
    };
    share.persist_cache();
    let (hash, file, meta, ranges) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            let refusal = Response::from_share_error(&e);
            send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&refusal)).await?;
            return Ok(Err(e.to_string()));
        }
    };
    let fingerprint = Fingerprint::of(&meta);
    let session_id: u64 = rand::rng().random();
    let token: Token = rand::rng().random();
    let secret = connection.export_secret(&seal::exporter_context(session_id, &token))?;
    let sent_size = ranges.as_ref().map_or(meta.len(), BlockRanges::total);
    let plan = SenderPlan {
        session: session_id,
        token,
        file,
        size: sent_size,
        ranges: ranges.map(|r| r.ranges).unwrap_or_default(),
        chunk_len: CHUNK_LEN,
        client_ip,
        max_rate: None,
        keys: TransferKeys::derive(&secret),
    };
    let mut session = match hub.start(plan, max_rate.map(|r| r as f64)) {
        Ok(session) => session,
        Err(e) => {
            let message = e.to_string();
            let refusal = Response::Error {
                kind: ErrorKind::Unavailable,
                message: message.clone(),
            };
            send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&refusal)).await?;
            return Ok(Err(message));
        }
    };
    let session_hex = format!("{session_id:016x}");
    let ready = Response::UdpReady {
        name: rel.clone(),
        session: session_hex.clone(),
        token: super::format_token(&token),
        size: sent_size,
        mtime: folder::modified(&meta),
        mode: folder::mode(&meta),
        chunk_len: CHUNK_LEN as u32,
        digests: crate::share::Digests {
            blake3: hash.blake3.clone(),
            sha256: hash.sha256,
            md5: hash.md5,
        },
    };
    let served = FileVersion {
        name: rel.clone(),
        blake3: hash.blake3.to_string(),
        size: meta.len(),
        mtime: folder::modified(&meta),
        mode: folder::mode(&meta),
    };
    if let Err(e) = send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&ready)).await {
        session.finish().await;
        return Err(e);
    }
    // The client's next message, while the session runs; once the session ended by itself,
    // either the transfer is complete (and `udp_finish` is due at once) or the client is
    // told it is over.
    let next = tokio::select! {
        next = connection.read_message::<DuringTransfer>() => Some(next),
        stats = session.ended() => match stats.end {
            Some(End::Complete) => None,
            end => {
                let message = match end {
                    Some(End::NoHello) => format!(
                        "UDP session {session_hex} ended: no authenticated datagram from the client within {HELLO_TIMEOUT:?}"
                    ),
                    Some(End::Silent) => format!(
                        "UDP session {session_hex} ended: the client sent no feedback for {SILENCE_TIMEOUT:?}"
                    ),
                    _ => format!("UDP session {session_hex} ended: the server could not go on"),
                };
                session.finish().await;
                let refusal = Response::Error {
                    kind: ErrorKind::Unavailable,
                    message: message.clone(),
                };
                send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&refusal)).await?;
                return Ok(Err(message));
            }
        },
    };
    let next = match next {
        Some(next) => next,
        None => {
            match tokio::time::timeout(FINISH_TIMEOUT, connection.read_message::<DuringTransfer>())
                .await
            {
                Ok(next) => next,
                Err(_) => {
                    session.finish().await;
                    return Err(ConnectionError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no udp_finish within {FINISH_TIMEOUT:?} of a complete UDP transfer"
                        ),
                    )));
                }
            }
        }
    };
    let stats = session.finish().await;
    match next {
        Ok(Some(DuringTransfer::UdpFinish(UdpFinish { session }))) if session == session_hex => {}
        Ok(Some(_)) => {
            let refusal = Response::Error {
                kind: ErrorKind::BadRequest,
                message: "expected udp_finish for the running transfer".to_string(),
            };
            send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&refusal)).await?;
            return Ok(Err("client broke the UDP protocol".to_string()));
        }
        Ok(None) => return Err(ConnectionError::Closed),
        Err(e) => return Err(e),
    }
    // The file must still be the version that was hashed and announced.
    let now = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        tokio::task::spawn_blocking(move || folder::stat(share.root(), &rel))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    };
    if now.as_ref().map(Fingerprint::of) != Some(fingerprint) {
        let error = ShareError::Changed(rel.clone());
        let refusal = Response::from_share_error(&error);
        send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&refusal)).await?;
        return Ok(Err(error.to_string()));
    }
    let end = Response::UdpEnd {
        sent: stats.sent,
        resent: stats.resent,
    };
    send_within(CONTROL_SEND_TIMEOUT, connection.write_message(&end)).await?;
    Ok(if stats.complete {
        Ok(served)
    } else {
        Err("transfer ended before it was complete".to_string())
    })
}
