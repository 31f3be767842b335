//! The requests a box answers, one module each: a request's wire form, the client's call
//! and the server's handling live together, in the spirit of mini-redis's `cmd/`.
//!
//! - [`index`]: `index`, the entries of the folder (plain and conditional);
//! - [`changes`]: `changes`, what changed in the folder since a mark (sync's listing);
//! - [`hash`]: `hash_verify` and `hash_checkall`;
//! - [`download`]: `download`, one file over TCP;
//! - [`batch`]: `download_many`, many small files in one exchange;
//! - [`udp`]: `download_udp` and `udp_finish`, a file over UDP;
//! - [`notices`]: sync's notices `changed`, `installed` and `installed_many`;
//! - [`inbox`]: the `installed` notices acknowledged, on disk until sync records them;
//! - [`listing`]: answers in batches, both ends (shared by index and hash).
//!
//! The server ([`crate::server`]) reads a [`Request`] and hands it to [`serve`]; the peer
//! client ([`crate::peer`]) builds one request, logs it, and calls it.

pub mod batch;
pub mod blocks;
pub mod changes;
pub mod download;
pub mod hash;
pub mod inbox;
pub mod index;
pub mod listing;
pub mod notices;
pub mod udp;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::Link;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::local::LocalBox;
use crate::protocol::decode::{Message, leading_tag};
use crate::protocol::{Connection, ConnectionError, ErrorKind, Response};
use crate::share::ShareError;
use crate::transfer::udp::UdpError;
use crate::transfer::udp::hub::UdpHub;
use crate::transfer::{TransferError, send_within};
use crate::types::BoxId;

/// Most names in one `download_many` or versions in one `installed_many`: a server refuses
/// longer lists, so that one request cannot hold a connection for an unbounded time.
pub const MAX_BATCH_NAMES: usize = 4096;

/// What a client asks of a box's server: the one wire form of every request (JSON in a
/// control frame, tagged by `request`). Each variant's fields live in its module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// See [`index::Index`].
    Index(index::Index),
    /// See [`changes::Changes`].
    Changes(changes::Changes),
    /// See [`hash::HashVerify`].
    HashVerify(hash::HashVerify),
    /// See [`hash::HashCheckall`].
    HashCheckall(hash::HashCheckall),
    /// See [`blocks::Blocks`].
    Blocks(blocks::Blocks),
    /// See [`download::Download`].
    Download(download::Download),
    /// See [`batch::DownloadMany`].
    DownloadMany(batch::DownloadMany),
    /// See [`udp::DownloadUdp`].
    DownloadUdp(udp::DownloadUdp),
    /// See [`notices::changed`].
    Changed,
    /// See [`notices::serve_installed`].
    Installed(crate::types::FileVersion),
    /// See [`notices::InstalledMany`].
    InstalledMany(notices::InstalledMany),
    /// See [`udp::UdpFinish`].
    UdpFinish(udp::UdpFinish),
}

impl Request {
    /// Whether this is one of sync's routine requests (notices, conditional listings),
    /// sent too often to be worth a line each in the request log.
    pub fn is_routine(&self) -> bool {
        match self {
            Request::Changed
            | Request::Installed(_)
            | Request::InstalledMany(_)
            | Request::Changes(_) => true,
            Request::Index(index) => index.unless.is_some(),
            Request::HashCheckall(checkall) => checkall.unless.is_some(),
            Request::HashVerify(_)
            | Request::Blocks(_)
            | Request::Download(_)
            | Request::DownloadMany(_)
            | Request::DownloadUdp(_)
            | Request::UdpFinish(_) => false,
        }
    }

    /// Whether this is one of sync's notices, answered by `ack`.
    pub fn is_notice(&self) -> bool {
        matches!(
            self,
            Request::Changed | Request::Installed(_) | Request::InstalledMany(_)
        )
    }

    /// A short human description, for the history log.
    pub fn describe(&self) -> String {
        match self {
            Request::Index(index) => format!("index {}", index.filter.describe()),
            Request::Changes(changes) => match changes.since {
                Some(mark) => format!("changes since {}", mark.seq),
                None => "changes".to_string(),
            },
            Request::HashVerify(verify) => format!("hash verify {}", verify.name),
            Request::HashCheckall(_) => "hash checkall".to_string(),
            Request::Blocks(blocks) => format!("blocks {}", blocks.name),
            Request::Download(download) if download.ranges.is_some() => {
                format!("download tcp {} (blocks)", download.name)
            }
            Request::Download(download) => format!("download tcp {}", download.name),
            Request::DownloadMany(many) => many.describe(),
            Request::DownloadUdp(udp) => format!("download udp {}", udp.name),
            Request::UdpFinish(finish) => format!("udp finish {}", finish.session),
            Request::Changed => "changed".to_string(),
            Request::Installed(installed) => format!("installed {}", installed.name),
            Request::InstalledMany(many) if many.removed.is_empty() => {
                format!("installed {} files", many.versions.len())
            }
            Request::InstalledMany(many) => format!(
                "installed {} files, removed {}",
                many.versions.len(),
                many.removed.len()
            ),
        }
    }
}

impl Message for Request {
    fn from_json(json: &[u8]) -> serde_json::Result<Request> {
        match leading_tag(json, "request") {
            // Names by the thousand: read straight into the fields (see protocol::decode).
            Some("download_many") => serde_json::from_slice(json).map(Request::DownloadMany),
            _ => serde_json::from_slice(json),
        }
    }
}

/// What the server knows while it answers one request.
///
/// Every answer's writes go through [`send_within`] with the box's stall limit
/// ([`ServeContext::stall`]): a client that takes nothing for that long fails its request,
/// and the server closes its connection.
pub struct ServeContext<'a> {
    /// This box.
    pub local: &'a Arc<LocalBox>,
    /// The UDP socket shared by all UDP transfers.
    pub hub: &'a Arc<UdpHub>,
    /// The client's address, which its UDP endpoint must share.
    pub client_ip: IpAddr,
    /// The client's box id, as its handshake proved.
    pub peer_id: &'a BoxId,
    /// Where sync's notices (and what was served) are noted.
    pub notices: &'a Arc<notices::Notices>,
}

impl ServeContext<'_> {
    /// How long a client may take nothing before its request fails.
    pub fn stall(&self) -> Duration {
        self.local.limits.stall
    }
}

/// How serving a request ended: the outer `Err` means the connection failed (and is
/// closed); the inner result is the request's own outcome, for the request log.
pub type Handled = Result<Result<(), String>, ConnectionError>;

/// Answers one request on `connection`.
pub async fn serve(
    request: Request,
    cx: &ServeContext<'_>,
    connection: &mut Connection<Link>,
) -> Handled {
    match request {
        Request::Index(index) => index.serve(cx, connection).await,
        Request::Changes(changes) => changes.serve(cx, connection).await,
        Request::HashVerify(verify) => verify.serve(cx, connection).await,
        Request::HashCheckall(checkall) => checkall.serve(cx, connection).await,
        Request::Blocks(blocks) => blocks.serve(cx, connection).await,
        Request::Download(download) => download.serve(cx, connection).await,
        Request::DownloadMany(many) => many.serve(cx, connection).await,
        Request::DownloadUdp(udp) => udp.serve(cx, connection).await,
        Request::UdpFinish(_) => udp::serve_finish(cx, connection).await,
        Request::Changed => notices::serve_changed(cx, connection).await,
        Request::Installed(version) => notices::serve_installed(version, cx, connection).await,
        Request::InstalledMany(many) => many.serve(cx, connection).await,
    }
}

/// Why a request's exchange failed, as the request's own call sees it; the peer client
/// adds which peer it was ([`crate::peer::PeerError`]).
#[derive(Debug, Error)]
pub enum CallError {
    /// The connection failed during the exchange.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The peer answered with an error.
    #[error("{message}")]
    Remote {
        /// What kind of failure.
        kind: ErrorKind,
        /// The peer's explanation.
        message: String,
    },
    /// The peer answered something that makes no sense here.
    #[error("{0}")]
    Protocol(String),
    /// A download failed.
    #[error(transparent)]
    Transfer(TransferError),
    /// A UDP download failed in a way only UDP can.
    #[error(transparent)]
    Udp(UdpError),
    /// The peer stopped answering: nothing arrived for this long.
    #[error("the peer stopped answering: nothing arrived for {}", crate::transfer::seconds(*.0))]
    Stalled(Duration),
}

/// Receives with a deadline: `read` (one frame of an answer) must complete within `limit`,
/// else [`CallError::Stalled`].
pub async fn receive_within<T>(
    limit: Duration,
    read: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, read).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CallError::Stalled(limit)),
    }
}

impl CallError {
    /// The error for an answer that does not fit the request.
    fn unexpected(response: &Response) -> CallError {
        CallError::Protocol(format!("{response:?}"))
    }
}

/// Refuses a request with an error answer, which the client must take within `stall`;
/// the connection stays usable.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    kind: ErrorKind,
    message: String,
    stall: Duration,
) -> Handled {
    let refusal = Response::Error {
        kind,
        message: message.clone(),
    };
    send_within(stall, connection.write_message(&refusal)).await?;
    Ok(Err(message))
}

/// Reports a share error as the request's answer, within `stall`.
async fn report<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    error: &ShareError,
    stall: Duration,
) -> Handled {
    let answer = Response::from_share_error(error);
    send_within(stall, connection.write_message(&answer)).await?;
    Ok(Err(error.to_string()))
}

/// The refusal of a list longer than [`MAX_BATCH_NAMES`].
fn too_many(count: usize) -> String {
    format!("{count} files in one request; at most {MAX_BATCH_NAMES} are served")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::RelPath;
    use crate::share::filter::IndexFilter;

    /// Each request's wire form is the flat JSON object docs/protocol.md shows, tagged by
    /// `request`, and reads back to the same request.
    #[test]
    fn requests_keep_their_wire_form() {
        let name = RelPath::parse("a b.txt").unwrap();
        let mtime = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let version = crate::types::FileVersion {
            name: name.clone(),
            blake3: "bb".repeat(32),
            size: 3,
            mtime: crate::time::Timestamp(mtime),
            mode: 0o644,
        };
        let cases = [
            (
                Request::Download(download::Download {
                    name: name.clone(),
                    blake3_only: true,
                    ranges: None,
                }),
                r#"{"request":"download","name":"a b.txt","blake3_only":true}"#,
            ),
            (
                Request::Download(download::Download {
                    name: name.clone(),
                    blake3_only: false,
                    ranges: Some(download::BlockRanges {
                        blake3: "bb".repeat(32),
                        ranges: vec![[0, 131072], [262144, 5]],
                    }),
                }),
                r#"{"request":"download","name":"a b.txt","ranges":{"blake3":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","ranges":[[0,131072],[262144,5]]}}"#,
            ),
            (
                Request::Blocks(blocks::Blocks { name: name.clone() }),
                r#"{"request":"blocks","name":"a b.txt"}"#,
            ),
            (
                Request::HashVerify(hash::HashVerify { name: name.clone() }),
                r#"{"request":"hash_verify","name":"a b.txt"}"#,
            ),
            (
                Request::HashCheckall(hash::HashCheckall { unless: None }),
                r#"{"request":"hash_checkall"}"#,
            ),
            (Request::Changed, r#"{"request":"changed"}"#),
            (
                Request::Changes(changes::Changes { since: None }),
                r#"{"request":"changes"}"#,
            ),
            (
                Request::Changes(changes::Changes {
                    since: Some(crate::share::ChangeMark { epoch: 7, seq: 42 }),
                }),
                r#"{"request":"changes","since":{"epoch":7,"seq":42}}"#,
            ),
            (
                Request::Index(index::Index {
                    filter: IndexFilter::Longlist,
                    unless: None,
                }),
                r#"{"request":"index","filter":{"filter":"longlist"}}"#,
            ),
            (
                Request::Index(index::Index {
                    filter: IndexFilter::Longlist,
                    unless: Some("v7".into()),
                }),
                r#"{"request":"index","filter":{"filter":"longlist"},"unless":"v7"}"#,
            ),
            (
                Request::DownloadUdp(udp::DownloadUdp {
                    name: name.clone(),
                    max_rate: None,
                    blake3_only: false,
                    ranges: None,
                }),
                r#"{"request":"download_udp","name":"a b.txt","max_rate":null}"#,
            ),
            (
                Request::Installed(version.clone()),
                r#"{"request":"installed","name":"a b.txt","blake3":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":3,"mtime":"2023-11-14T22:13:20.000000000Z","mode":420}"#,
            ),
            (
                Request::InstalledMany(notices::InstalledMany {
                    versions: vec![version],
                    removed: Vec::new(),
                }),
                r#"{"request":"installed_many","versions":[{"name":"a b.txt","blake3":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":3,"mtime":"2023-11-14T22:13:20.000000000Z","mode":420}]}"#,
            ),
            (
                Request::DownloadMany(batch::DownloadMany {
                    names: vec![name.clone()],
                }),
                r#"{"request":"download_many","names":["a b.txt"]}"#,
            ),
            (
                Request::UdpFinish(udp::UdpFinish {
                    session: "00000000000000ff".into(),
                }),
                r#"{"request":"udp_finish","session":"00000000000000ff"}"#,
            ),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(Request::from_json(json.as_bytes()).unwrap(), request);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
    }

    /// The transfer's own reading of `udp_finish` agrees with the request's wire form,
    /// and takes any other request for "not the end".
    #[test]
    fn a_udp_transfer_reads_its_finish_as_requests_write_it() {
        use crate::transfer::udp::DuringTransfer;
        let finish = udp::UdpFinish {
            session: "00000000000000ff".into(),
        };
        let as_request = serde_json::to_string(&Request::UdpFinish(finish.clone())).unwrap();
        let in_transfer = DuringTransfer::UdpFinish(finish);
        assert_eq!(serde_json::to_string(&in_transfer).unwrap(), as_request);
        assert_eq!(
            DuringTransfer::from_json(as_request.as_bytes()).unwrap(),
            in_transfer
        );
        let other = serde_json::to_string(&Request::Changed).unwrap();
        assert_eq!(
            DuringTransfer::from_json(other.as_bytes()).unwrap(),
            DuringTransfer::Other
        );
    }

    /// The fast way refuses what the general way refuses: a name that breaks the path
    /// rules.
    #[test]
    fn a_batch_naming_a_path_outside_is_refused() {
        let escaping = br#"{"request":"download_many","names":["../outside"]}"#;
        assert!(Request::from_json(escaping).is_err());
    }
}
