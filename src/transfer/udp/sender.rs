//! The serving box's UDP sending loop: a thin driver around
//! [`super::proto::sender::Sender`]. It feeds the session's datagrams and the clock to the
//! state machine, reads the chunks it asks for from the file, and sends them in segmented
//! batches.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::proto::sender::{End, Sender, SenderConfig};
use super::socket::FastSocket;
use super::wire::{self, Token};

pub use super::proto::sender::SenderStats;

/// Chunks read from disk at once for first sends (they are sequential).
const READ_AHEAD: usize = 64;

/// What the sender needs to know about the transfer.
pub struct SenderPlan {
    /// The session id.
    pub session: u64,
    /// The secret the receiver must present.
    pub token: Token,
    /// The file, open for reading.
    pub file: File,
    /// Its size.
    pub size: u64,
    /// File bytes per datagram.
    pub chunk_len: usize,
    /// Only a UDP endpoint at this IP (the TCP client's) may become the receiver.
    pub client_ip: IpAddr,
    /// Rate cap, bytes per second.
    pub max_rate: Option<f64>,
}

/// Runs one sending session until the receiver has everything, `stop` fires, or the
/// receiver falls silent (or never says HELLO). `incoming` carries this session's
/// datagrams from the server's UDP socket.
pub async fn run(
    plan: SenderPlan,
    socket: Arc<FastSocket>,
    mut incoming: mpsc::Receiver<(Bytes, SocketAddr)>,
    mut stop: watch::Receiver<bool>,
) -> SenderStats {
    let mut sender = Sender::new(
        SenderConfig {
            session: plan.session,
            token: plan.token,
            size: plan.size,
            chunk_len: plan.chunk_len,
            client_ip: plan.client_ip,
            max_rate: plan.max_rate,
        },
        Instant::now(),
    );
    let batch_capacity = socket.batch_capacity(wire::MAX_DATAGRAM);
    let mut batch = Vec::with_capacity(batch_capacity * wire::MAX_DATAGRAM);
    let mut reader = ChunkReader::new(&plan);
    // One timer, moved only when the deadline does.
    let timer = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(timer);
    while let Some(deadline) = sender.poll_timeout() {
        let deadline = deadline.into();
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            _ = stop.changed() => break,
            datagram = incoming.recv() => {
                let Some((bytes, from)) = datagram else { break };
                sender.handle(Instant::now(), from, &bytes);
            }
            _ = &mut timer => sender.handle_timeout(Instant::now()),
        }
        let now = Instant::now();
        let mut in_batch = 0;
        let mut destination = None;
        while let Some(transmit) = sender.poll_transmit(now) {
            destination = Some(transmit.destination);
            let Ok(payload) = reader.chunk(transmit.chunk) else {
                tracing::warn!(session = plan.session, "cannot read the file; abandoning");
                return sender.stats();
            };
            transmit.encode(payload, &mut batch);
            in_batch += 1;
            // A short datagram can only end a segmented send.
            if in_batch == batch_capacity || transmit.len < plan.chunk_len {
                if socket
                    .send(transmit.destination, &batch, wire::MAX_DATAGRAM)
                    .await
                    .is_err()
                {
                    return sender.stats();
                }
                batch.clear();
                in_batch = 0;
            }
        }
        if let Some(destination) = destination.filter(|_| in_batch > 0)
            && socket
                .send(destination, &batch, wire::MAX_DATAGRAM)
                .await
                .is_err()
        {
            return sender.stats();
        }
        batch.clear();
    }
    if sender.end() == Some(End::Silent) {
        tracing::info!(session = plan.session, "receiver fell silent; abandoning");
    }
    sender.stats()
}

/// Reads chunks from the file, a block of [`READ_AHEAD`] chunks at a time, so that first
/// sends (which go in order) cost one read per block rather than one per datagram.
struct ChunkReader<'a> {
    plan: &'a SenderPlan,
    /// First chunk in `block`.
    first: u32,
    /// Chunks in `block`.
    count: u32,
    block: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    fn new(plan: &'a SenderPlan) -> ChunkReader<'a> {
        ChunkReader {
            plan,
            first: 0,
            count: 0,
            block: vec![0u8; plan.chunk_len * READ_AHEAD],
        }
    }

    /// The bytes of `chunk`.
    fn chunk(&mut self, chunk: u32) -> std::io::Result<&[u8]> {
        let chunk_len = self.plan.chunk_len as u64;
        if chunk < self.first || chunk >= self.first + self.count {
            let offset = u64::from(chunk) * chunk_len;
            let len = (self.plan.size - offset).min(self.block.len() as u64) as usize;
            self.plan
                .file
                .read_exact_at(&mut self.block[..len], offset)?;
            self.first = chunk;
            self.count = len.div_ceil(self.plan.chunk_len) as u32;
        }
        let start = u64::from(chunk - self.first) * chunk_len;
        let len = (self.plan.size - u64::from(chunk) * chunk_len).min(chunk_len);
        Ok(&self.block[start as usize..(start + len) as usize])
    }
}
