//! `download_udp` and `udp_finish`: a file over UDP, negotiated on the TCP connection
//! (answered by `udp_ready`), ended by the client's `udp_finish` (answered by `udp_end`).
//! The datagrams are [`crate::transfer::udp`]'s.

use std::sync::Arc;

use crate::protocol::{Link, Role};
use serde::{Deserialize, Serialize};

use super::{CallError, Handled, ServeContext, refuse};
use crate::protocol::{Connection, ErrorKind};
use crate::share::{DigestSet, RelPath, Share};
use crate::transfer::delta::BlockRanges;
use crate::transfer::udp::seal::DropCounts;
use crate::transfer::udp::{self, UdpError};
use crate::transfer::{Downloaded, Landing, Progress};

/// The fields of `download_udp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadUdp {
    /// The file.
    pub name: RelPath,
    /// The client's cap on the sending rate, bytes per second.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// As for [`super::download::Download`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blake3_only: bool,
    /// As for [`super::download::Download`]: only these blocks of one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<BlockRanges>,
}

impl DownloadUdp {
    /// The request for `name`, landing as `landing` says, at most at `max_rate`.
    pub fn new(name: &RelPath, landing: &Landing, max_rate: Option<u64>) -> DownloadUdp {
        DownloadUdp {
            name: name.clone(),
            max_rate,
            blake3_only: landing.digests.blake3_only(),
            ranges: None,
        }
    }

    /// Server: starts a sending session to the client's address and waits for its end.
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        // Datagrams go to where the session came from: only a box that dialed this one can
        // be sent them (one that this box dialed may sit behind NAT, its port unknown).
        if connection.session().role == Role::Dialer {
            let message = format!(
                "box {} serves UDP transfers only to boxes that dial it: use TCP",
                cx.local.id
            );
            return refuse(connection, ErrorKind::Unavailable, message, cx.stall()).await;
        }
        if let Some(fault) = self.ranges.as_ref().and_then(BlockRanges::fault) {
            return refuse(connection, ErrorKind::BadRequest, fault, cx.stall()).await;
        }
        let wanted = udp::serve::Wanted {
            max_rate: self.max_rate,
            digests: DigestSet::from_blake3_only(self.blake3_only),
            ranges: self.ranges,
        };
        let share = &cx.local.share;
        let outcome =
            udp::serve::serve_download(connection, share, cx.hub, &self.name, wanted, cx.client_ip)
                .await?;
        Ok(outcome.map(|served| cx.notices.note_served(cx.peer_id, served)))
    }

    /// Client, once the request is sent: negotiates the transfer on `connection` and
    /// receives the datagrams into `share`, verified.
    pub async fn read_answer(
        &self,
        connection: &mut Connection<Link>,
        share: &Arc<Share>,
        landing: &Landing,
        progress: Progress<'_>,
    ) -> Result<Downloaded, CallError> {
        let session = connection.session();
        let (local, remote) = (session.local_addr, session.peer_addr);
        let path = udp::receiver::UdpPath {
            local_ip: local.ip(),
            server: remote,
        };
        self.receive(connection, path, share, landing, progress)
            .await
            .map(|(downloaded, _)| downloaded)
    }

    /// Client, once a ranged request is sent: receives the blocks it asked for into
    /// `sink` (see [`udp::receiver::receive_blocks`]). Returns the blocks written and
    /// checked, even when it then failed.
    pub async fn read_blocks(
        &self,
        connection: &mut Connection<Link>,
        share: &Arc<Share>,
        sink: udp::receiver::BlockSink,
        progress: Progress<'_>,
    ) -> (Vec<usize>, Result<udp::receiver::BlocksReceived, CallError>) {
        let session = connection.session();
        let path = udp::receiver::UdpPath {
            local_ip: session.local_addr.ip(),
            server: session.peer_addr,
        };
        let (written, outcome) =
            udp::receiver::receive_blocks(connection, path, share, &self.name, sink, progress)
                .await;
        let outcome = outcome.map_err(|e| match e {
            UdpError::Transfer(e) => CallError::Transfer(e),
            other => CallError::Udp(other),
        });
        (written, outcome)
    }

    /// Client, once the request is sent: as [`DownloadUdp::read_answer`], with the
    /// datagrams on the path given (tests put a relay there), and also returns how many
    /// datagrams this side dropped as forged, replayed or damaged.
    pub async fn receive(
        &self,
        connection: &mut Connection<Link>,
        path: udp::receiver::UdpPath,
        share: &Arc<Share>,
        landing: &Landing,
        progress: Progress<'_>,
    ) -> Result<(Downloaded, DropCounts), CallError> {
        udp::receiver::receive_file(connection, path, share, &self.name, landing, progress)
            .await
            .map_err(|e| match e {
                UdpError::Transfer(e) => CallError::Transfer(e),
                other => CallError::Udp(other),
            })
    }
}

/// The fields of `udp_finish`, which the transfer itself writes and reads.
pub use crate::transfer::udp::UdpFinish;

/// Server side of `udp_finish` outside a transfer: there is nothing to finish (within one,
/// the transfer reads it: see [`udp::serve`]).
pub async fn serve_finish(cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
    refuse(
        connection,
        ErrorKind::BadRequest,
        "no UDP transfer is running on this connection".to_string(),
        cx.stall(),
    )
    .await
}
