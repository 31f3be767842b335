//! Answers that come in batches (`entries`, `hashes`), both ends: the server cuts a listing
//! into responses of bounded size; the client collects them, bounded in count, or takes
//! them batch by batch ([`receive_each`], in bounded memory). Conditional requests
//! (`unless`) end with the folder's version, or are answered `unchanged`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{CallError, Handled, receive_within, refuse, report};
use crate::local::Limits;
use crate::protocol::message::{Entries, Hashes};
use crate::protocol::{Connection, ConnectionError, ErrorKind, Response};
use crate::share::{Entry, FileHash, Share, ShareError, Snapshot};
use crate::transfer::send_within;

/// Serialized size at which a batch of entries or hashes is sent and a new one begun.
const BATCH_BYTES: usize = 256 * 1024;

/// Most entries accepted in one listing, so a hostile peer cannot exhaust memory.
pub const MAX_LISTED: usize = 10_000_000;

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
pub trait Listed: Serialize + Clone + Send + Sync + Sized + 'static {
    /// The response carrying one batch of these.
    fn batch(items: Vec<Self>, more: bool, version: Option<String>) -> Response;
    /// The batch in `response`, or the response itself if it carries none of these.
    fn unbatch(response: Response) -> Unbatched<Self>;
    /// At most this many bytes of JSON, known without serializing: listings are sent
    /// every sync round, and serializing each item twice (once to measure) doubled their
    /// cost.
    fn max_wire_len(&self) -> usize;
    /// About how many bytes of memory the item holds, for the budget of answers waiting
    /// for slow clients ([`crate::share::AnswerBudget`]).
    fn held_len(&self) -> usize;
    /// The items of this kind in a snapshot, as conditional requests list them.
    fn in_snapshot(snapshot: &Snapshot) -> impl Iterator<Item = &Self> + Send + '_;
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

/// What the allocator adds to each string an item holds (its header and rounding), and
/// the listing's own copies while it is read and sorted: measured, a listing of 100,000
/// entries held about twice the bytes of its strings and structs.
const ALLOCATION_OVERHEAD: usize = 48;

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

    fn held_len(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self.name.as_str().len()
            + self.file_type.len()
            + 2 * ALLOCATION_OVERHEAD
    }

    fn in_snapshot(snapshot: &Snapshot) -> impl Iterator<Item = &Entry> + Send + '_ {
        snapshot.items.iter().map(|(entry, _)| entry)
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

    fn held_len(&self) -> usize {
        let digests = [&self.sha256, &self.md5].map(|d| d.as_ref().map_or(0, |d| d.len()));
        std::mem::size_of::<FileHash>()
            + self.name.as_str().len()
            + self.blake3.len()
            + digests.iter().sum::<usize>()
            + 4 * ALLOCATION_OVERHEAD
    }

    fn in_snapshot(snapshot: &Snapshot) -> impl Iterator<Item = &FileHash> + Send + '_ {
        snapshot.items.iter().filter_map(|(_, hash)| hash.as_ref())
    }
}

/// Sends `items` as a series of responses, each under [`BATCH_BYTES`] serialized, the last
/// one marked `more: false` and carrying `version` (an empty list is one empty batch).
/// Items are taken from the iterator (and copied) only as batches go out, so a listing
/// drawn from a shared snapshot costs one batch per client; each batch must be taken by
/// the client within `stall`, or the send fails (a `TimedOut` connection error).
pub async fn send<'s, S, T>(
    connection: &mut Connection<S>,
    items: impl Iterator<Item = &'s T> + Send,
    version: Option<String>,
    stall: Duration,
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
        batch.push(item.clone());
        if batch_bytes >= BATCH_BYTES && items.peek().is_some() {
            let response = T::batch(std::mem::take(&mut batch), true, None);
            send_within(stall, connection.write_message(&response)).await?;
            batch_bytes = 0;
        }
    }
    let last = T::batch(batch, false, version);
    send_within(stall, connection.write_message(&last)).await
}

/// How a plain listing is read afresh: a future per call (it may be read twice).
pub type Fresh<'a, T> = dyn Fn() -> BoxFuture<'a, Result<Vec<T>, ShareError>> + Send + Sync + 'a;

/// Which items of a listing a request wants.
pub type Keep<'a, T> = dyn Fn(&T) -> bool + Send + Sync + 'a;

/// The items of `inner` that `keep` wants (a named type, not a closure: the future that
/// holds it across its sends must be `Send` for every lifetime).
struct Kept<'k, I, T: 'static> {
    /// All the items.
    inner: I,
    /// The filter.
    keep: &'k Keep<'k, T>,
}

impl<'s, I: Iterator<Item = &'s T>, T: 'static> Iterator for Kept<'_, I, T> {
    type Item = &'s T;

    fn next(&mut self) -> Option<&'s T> {
        self.inner.by_ref().find(|item| (self.keep)(item))
    }
}

/// Server: answers a listing request. Plain (`unless` absent), with `fresh()`: the folder
/// read afresh, those of its items that pass `keep`. Conditional: `unchanged` while the
/// recent snapshot is still at `unless`, otherwise the snapshot's items that pass `keep`,
/// ending with its version.
///
/// Memory for clients that do not read stays bounded: a conditional answer is drawn from
/// the shared snapshot one batch at a time; a plain one, which must hold its own listing
/// until it is sent, is charged to the box's [`crate::share::AnswerBudget`] before it is
/// read (the size of the last such listing, or the whole budget while none is known;
/// settled at its real size once read: a listing that does not fit then is dropped and
/// read again once it fits). When the budget
/// stays full for `stall` (other clients are not reading theirs), the request is answered
/// `unavailable`. Every write must be taken by the client within `stall`.
pub async fn answer<S, T>(
    connection: &mut Connection<S>,
    share: &Arc<Share>,
    unless: Option<String>,
    stall: Duration,
    fresh: &Fresh<'_, T>,
    keep: &Keep<'_, T>,
) -> Handled
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    let Some(unless) = unless else {
        let budget = share.answers();
        let busy = format!(
            "this box is holding {} MiB of listings for clients that do not read them; try again later",
            budget.pending() >> 20
        );
        let mut wanted = budget.guess();
        // At most twice: a listing bigger than the guess and than what is free now is
        // dropped, and read again once the budget has room for all of it.
        for _ in 0..2 {
            let Some(mut charge) = budget.charge(wanted, stall).await else {
                return refuse(connection, ErrorKind::Unavailable, busy, stall).await;
            };
            let mut items = match fresh().await {
                Ok(items) => items,
                Err(e) => return report(connection, &e, stall).await,
            };
            items.retain(|item| keep(item));
            let held: usize = items.iter().map(Listed::held_len).sum();
            if !charge.settle(held) {
                wanted = held;
                continue;
            }
            send(connection, items.iter(), None, stall).await?;
            drop(charge);
            return Ok(Ok(()));
        }
        return refuse(connection, ErrorKind::Unavailable, busy, stall).await;
    };
    match share.recent_snapshot().await {
        Ok(snapshot) if snapshot.version() == unless => {
            send_within(stall, connection.write_message(&Response::Unchanged)).await?;
            Ok(Ok(()))
        }
        Ok(snapshot) => {
            let version = Some(snapshot.version());
            let items = Kept {
                inner: T::in_snapshot(&snapshot),
                keep,
            };
            send(connection, items, version, stall).await?;
            Ok(Ok(()))
        }
        Err(e) => report(connection, &e, stall).await,
    }
}

/// Reads the batches of a listing that must not be conditional. The first batch must
/// arrive within `limits.think` of the request (the peer may have a folder to hash), each
/// further one within `limits.stall`: else [`CallError::Stalled`].
pub async fn receive<S, T>(
    connection: &mut Connection<S>,
    limits: &Limits,
) -> Result<Vec<T>, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    match receive_any(connection, limits).await? {
        (Ending::Plain | Ending::Version(_), items) => Ok(items),
        (Ending::Unchanged, _) => Err(unchanged_unasked()),
    }
}

/// Reads the batches of a conditional listing: `unchanged`, or items and a version; with
/// the deadlines of [`receive`].
pub async fn receive_conditional<S, T>(
    connection: &mut Connection<S>,
    limits: &Limits,
) -> Result<Listing<T>, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    match receive_any(connection, limits).await? {
        (Ending::Unchanged, _) => Ok(Listing::Unchanged),
        (Ending::Version(version), items) => Ok(Listing::Listed { items, version }),
        (Ending::Plain, _) => Err(CallError::Protocol("listing without a version".into())),
    }
}

/// How a listing read batch by batch ([`receive_each`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// Every batch arrived and was taken.
    Complete,
    /// The reader stopped it (its callback returned `Break`); the rest was not read.
    Stopped,
}

/// Reads a listing that must not be conditional batch by batch, handing each batch to
/// `each` as it arrives, so that the caller holds one batch at a time (a listing of a
/// million entries is shown, not kept). `each` returning `Break` stops the listing:
/// nothing more is read, and the caller drops the connection (its stream), which ends the
/// peer's answer (its next write fails). The deadlines of [`receive`] apply to each wait on
/// the peer; the time `each` takes is not counted against them.
pub async fn receive_each<S, T, F>(
    connection: &mut Connection<S>,
    limits: &Limits,
    mut each: F,
) -> Result<Streamed, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
    F: FnMut(Vec<T>) -> ControlFlow<()>,
{
    match read_batches(connection, limits, &mut each).await? {
        None => Ok(Streamed::Stopped),
        Some(Ending::Plain | Ending::Version(_)) => Ok(Streamed::Complete),
        Some(Ending::Unchanged) => Err(unchanged_unasked()),
    }
}

fn unchanged_unasked() -> CallError {
    CallError::Protocol("'unchanged' answers a listing that named no version".into())
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

/// Collects a whole listing, bounded in count ([`MAX_LISTED`]).
async fn receive_any<S, T>(
    connection: &mut Connection<S>,
    limits: &Limits,
) -> Result<(Ending, Vec<T>), CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
{
    let mut all = Vec::new();
    let mut too_long = false;
    let ending = read_batches(connection, limits, &mut |items: Vec<T>| {
        all.extend(items);
        too_long = all.len() > MAX_LISTED;
        if too_long {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
    match ending {
        Some(ending) => Ok((ending, all)),
        None => Err(CallError::Protocol("listing too long".into())),
    }
}

/// Reads the batches of a listing, each handed to `each`; `None` when `each` stopped it.
/// `unchanged` is accepted only before any item.
async fn read_batches<S, T, F>(
    connection: &mut Connection<S>,
    limits: &Limits,
    each: &mut F,
) -> Result<Option<Ending>, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Listed,
    F: FnMut(Vec<T>) -> ControlFlow<()>,
{
    let mut wait = limits.think;
    let mut none_yet = true;
    loop {
        let response = receive_within(wait, connection.expect_message::<Response>()).await?;
        wait = limits.stall;
        match T::unbatch(response) {
            Unbatched::Batch(batch) => {
                none_yet &= batch.items.is_empty();
                if each(batch.items).is_break() {
                    return Ok(None);
                }
                if !batch.more {
                    return Ok(Some(batch.version.map_or(Ending::Plain, Ending::Version)));
                }
            }
            Unbatched::Other(Response::Unchanged) if none_yet => {
                return Ok(Some(Ending::Unchanged));
            }
            Unbatched::Other(Response::Error { kind, message }) => {
                return Err(CallError::Remote { kind, message });
            }
            Unbatched::Other(other) => return Err(CallError::unexpected(&other)),
        }
    }
}
