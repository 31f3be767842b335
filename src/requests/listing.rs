//! Answers that come in batches (`entries`, `hashes`), both ends: the server cuts a listing
//! into responses of bounded size, the client collects them, bounded in count. Conditional
//! requests (`unless`) end with the folder's version, or are answered `unchanged`.

use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{CallError, Handled, report};
use crate::protocol::message::{Entries, Hashes};
use crate::protocol::{Connection, ConnectionError, Response};
use crate::share::{Entry, FileHash, Share, ShareError, Snapshot};

/// Serialized size at which a batch of entries or hashes is sent and a new one begun.
const BATCH_BYTES: usize = 256 * 1024;

/// Most entries accepted in one listing, so a hostile peer cannot exhaust memory.
const MAX_LISTED: usize = 10_000_000;

/// The answer to a conditional listing request.
#[derive(Debug)]
pub enum Listing<T> {
    /// The peer's folder is still at the version asked about: the earlier answer holds.
    Unchanged,
    /// The listing, and the version of the peer's folder it describes.
    Listed {
        /// The entries or hashes.
        items: Vec<T>,
        /// What to send as `unless` next time.
        version: String,
    },
}

/// An item of a listing: how it travels in a batch, and an upper bound of its JSON size.
pub trait Listed: Serialize + Sized {
    /// The response carrying one batch of these.
    fn batch(items: Vec<Self>, more: bool, version: Option<String>) -> Response;
    /// The batch in `response`, or the response itself if it carries none of these.
    fn unbatch(response: Response) -> Unbatched<Self>;
    /// At most this many bytes of JSON, known without serializing: listings are sent
    /// every sync round, and serializing each item twice (once to measure) doubled their
    /// cost.
    fn max_wire_len(&self) -> usize;
}

/// A response of a listing, taken apart.
pub enum Unbatched<T> {
    /// A batch of the items.
    Batch(Batch<T>),
    /// Anything else (an error, `unchanged`, nonsense).
    Other(Response),
}

/// One batch of a listing, taken apart.
pub struct Batch<T> {
    /// Its items.
    items: Vec<T>,
    /// Whether another batch follows.
    more: bool,
    /// On the last batch of a conditional answer: the folder's version.
    version: Option<String>,
}

/// JSON escapes a byte in at most six (`\u001f`); everything else in these items is short.
const FIXED_FIELDS: usize = 256;

impl Listed for Entry {
    fn batch(entries: Vec<Entry>, more: bool, version: Option<String>) -> Response {
        Response::Entries(Entries {
            entries,
            more,
            version,
        })
    }

    fn unbatch(response: Response) -> Unbatched<Entry> {
        match response {
            Response::Entries(Entries {
                entries,
                more,
                version,
            }) => Unbatched::Batch(Batch {
                items: entries,
                more,
                version,
            }),
            other => Unbatched::Other(other),
        }
    }

    fn max_wire_len(&self) -> usize {
        6 * (self.name.as_str().len() + self.file_type.len()) + FIXED_FIELDS
    }
}

impl Listed for FileHash {
    fn batch(hashes: Vec<FileHash>, more: bool, version: Option<String>) -> Response {
        Response::Hashes(Hashes {
            hashes,
            more,
            version,
        })
    }

    fn unbatch(response: Response) -> Unbatched<FileHash> {
        match response {
            Response::Hashes(Hashes {
                hashes,
                more,
                version,
            }) => Unbatched::Batch(Batch {
                items: hashes,
                more,
                version,
            }),
            other => Unbatched::Other(other),
        }
    }

    fn max_wire_len(&self) -> usize {
        6 * self.name.as_str().len() + 64 + 32 + FIXED_FIELDS
    }
}

/// Sends `items` as a series of responses, each under [`BATCH_BYTES`] serialized, the last
/// one marked `more: false` and carrying `version` (an empty list is one empty batch).
pub async fn send<S, T>(
    connection: &mut Connection<S>,
    items: impl Iterator<Item = T>,
    version: Option<String>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut items = items.peekable();
    while let Some(item) = items.next() {
        batch_bytes += item.max_wire_len() + 1;
        batch.push(item);
        if batch_bytes >= BATCH_BYTES && items.peek().is_some() {
            connection
                .write_message(&T::batch(std::mem::take(&mut batch), true, None))
                .await?;
            batch_bytes = 0;
        }
    }
    connection
        .write_message(&T::batch(batch, false, version))
        .await
}

/// Server: answers a listing request. Plain (`unless` absent), with `fresh`: the folder
/// read afresh. Conditional: `unchanged` while the recent snapshot is still at `unless`,
/// otherwise `from_snapshot` of it, ending with its version.
pub async fn answer<S, T>(
    connection: &mut Connection<S>,
    share: &Arc<Share>,
    unless: Option<String>,
    fresh: impl Future<Output = Result<Vec<T>, ShareError>>,
    from_snapshot: impl FnOnce(&Snapshot) -> Vec<T>,
) -> Handled
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    let Some(unless) = unless else {
        return match fresh.await {
            Ok(items) => {
                send(connection, items.into_iter(), None).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e).await,
        };
    };
    match share.recent_snapshot().await {
        Ok(snapshot) if snapshot.version == unless => {
            connection.write_message(&Response::Unchanged).await?;
            Ok(Ok(()))
        }
        Ok(snapshot) => {
            let items = from_snapshot(&snapshot);
            let version = Some(snapshot.version.clone());
            send(connection, items.into_iter(), version).await?;
            Ok(Ok(()))
        }
        Err(e) => report(connection, &e).await,
    }
}

/// Reads the batches of a listing that must not be conditional.
pub async fn receive<S, T>(connection: &mut Connection<S>) -> Result<Vec<T>, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    match receive_any(connection).await? {
        (Ending::Plain | Ending::Version(_), items) => Ok(items),
        (Ending::Unchanged, _) => Err(CallError::Protocol(
            "'unchanged' answers a listing that named no version".into(),
        )),
    }
}

/// Reads the batches of a conditional listing: `unchanged`, or items and a version.
pub async fn receive_conditional<S, T>(
    connection: &mut Connection<S>,
) -> Result<Listing<T>, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    match receive_any(connection).await? {
        (Ending::Unchanged, _) => Ok(Listing::Unchanged),
        (Ending::Version(version), items) => Ok(Listing::Listed { items, version }),
        (Ending::Plain, _) => Err(CallError::Protocol("listing without a version".into())),
    }
}

/// How a listing ended, beyond its items.
enum Ending {
    /// A last batch without a version.
    Plain,
    /// `unchanged`.
    Unchanged,
    /// A last batch with the folder's version.
    Version(String),
}

async fn receive_any<S, T>(connection: &mut Connection<S>) -> Result<(Ending, Vec<T>), CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    let mut all = Vec::new();
    loop {
        let response = connection.expect_message::<Response>().await?;
        match T::unbatch(response) {
            Unbatched::Batch(batch) => {
                all.extend(batch.items);
                if all.len() > MAX_LISTED {
                    return Err(CallError::Protocol("listing too long".into()));
                }
                if !batch.more {
                    let ending = batch.version.map_or(Ending::Plain, Ending::Version);
                    return Ok((ending, all));
                }
            }
            Unbatched::Other(Response::Unchanged) if all.is_empty() => {
                return Ok((Ending::Unchanged, all));
            }
            Unbatched::Other(Response::Error { kind, message }) => {
                return Err(CallError::Remote { kind, message });
            }
            Unbatched::Other(other) => return Err(CallError::unexpected(&other)),
        }
    }
}
