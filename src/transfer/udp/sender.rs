//! The serving box's UDP sending loop: a thin driver around
//! [`super::proto::sender::Sender`]. It opens the session's datagrams (dropping and
//! counting what does not authenticate or was seen before) and feeds them and the clock to
//! the state machine, reads the chunks it asks for from the file, and seals and sends them
//! in segmented batches.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::proto::sender::{End, Sender, SenderConfig};
use super::seal::{Opener, Sealer, TransferKeys};
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
    /// The bytes sent: the file's size, or the ranges' total.
    pub size: u64,
    /// Only these `[offset, length]` ranges of the file, one after the other (a box that
    /// has the other blocks); empty: the whole file.
    pub ranges: Vec<[u64; 2]>,
    /// File bytes per datagram.
    pub chunk_len: usize,
    /// Only a UDP endpoint at this IP (the TCP client's) may become the receiver.
    pub client_ip: IpAddr,
    /// Rate cap, bytes per second.
    pub max_rate: Option<f64>,
    /// The transfer's keys, from the TCP connection that negotiated it.
    pub keys: TransferKeys,
}

/// Runs one sending session until the receiver has everything, `stop` fires, or the
/// receiver falls silent (or never says HELLO). `incoming` carries this session's
/// datagrams, still sealed, from the server's UDP socket.
pub async fn run(
    plan: SenderPlan,
    socket: Arc<FastSocket>,
    incoming: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    stop: watch::Receiver<bool>,
) -> SenderStats {
    let SenderPlan {
        session,
        token,
        file,
        size,
        ranges,
        chunk_len,
        client_ip,
        max_rate,
        keys,
    } = plan;
    let mut sender = Sender::new(
        SenderConfig {
            session,
            token,
            size,
            chunk_len,
            client_ip,
            max_rate,
        },
        Instant::now(),
    );
    let (mut sealer, mut opener) = keys.for_server();
    let mut reader = ChunkReader::new(&file, size, &ranges, chunk_len);
    let sent = drive(
        &mut sender,
        &mut sealer,
        &mut opener,
        &mut reader,
        &socket,
        incoming,
        stop,
    )
    .await;
    if let Err(problem) = sent {
        tracing::warn!(session, "{problem}; abandoning");
    }
    if sender.end() == Some(End::Silent) {
        tracing::info!(session, "receiver fell silent; abandoning");
    }
    if sender.end() == Some(End::NoHello) {
        tracing::info!(session, "no authenticated HELLO arrived; abandoning");
    }
    let mut stats = sender.stats();
    stats.drops = opener.drops();
    let drops = stats.drops;
    if drops.any() {
        tracing::info!(
            session,
            sent = stats.sent,
            resent = stats.resent,
            forged = drops.forged,
            replayed = drops.replayed,
            damaged = drops.damaged,
            "UDP session over; dropped datagrams"
        );
    } else {
        tracing::debug!(
            session,
            sent = stats.sent,
            resent = stats.resent,
            "UDP session over"
        );
    }
    stats
}

/// The loop of [`run`]: until the state machine ends or `stop` fires. An error says why
/// the session cannot go on (the socket or the file failed, or the keys are used up).
async fn drive(
    sender: &mut Sender,
    sealer: &mut Sealer,
    opener: &mut Opener,
    reader: &mut ChunkReader<'_>,
    socket: &FastSocket,
    mut incoming: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let chunk_len = reader.chunk_len;
    let batch_capacity = socket.batch_capacity(wire::MAX_DATAGRAM);
    let mut batch = Vec::with_capacity(batch_capacity * wire::MAX_DATAGRAM);
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
                let Some((mut bytes, from)) = datagram else { break };
                if let Some(plain) = opener.open(&mut bytes) {
                    sender.handle(Instant::now(), from, plain);
                }
            }
            _ = &mut timer => sender.handle_timeout(Instant::now()),
        }
        let now = Instant::now();
        let mut in_batch = 0;
        let mut destination = None;
        while let Some(transmit) = sender.poll_transmit(now) {
            destination = Some(transmit.destination);
            let payload = reader
                .chunk(transmit.chunk)
                .map_err(|e| format!("cannot read the file: {e}"))?;
            let start = batch.len();
            transmit.encode(payload, &mut batch);
            sealer.seal(&mut batch, start).map_err(|e| e.to_string())?;
            in_batch += 1;
            // A short datagram can only end a segmented send.
            if in_batch == batch_capacity || transmit.len < chunk_len {
                socket
                    .send(transmit.destination, &batch, wire::MAX_DATAGRAM)
                    .await
                    .map_err(|e| format!("cannot send: {e}"))?;
                batch.clear();
                in_batch = 0;
            }
        }
        if let Some(destination) = destination.filter(|_| in_batch > 0) {
            socket
                .send(destination, &batch, wire::MAX_DATAGRAM)
                .await
                .map_err(|e| format!("cannot send: {e}"))?;
        }
        batch.clear();
    }
    Ok(())
}

/// Reads chunks from the file, a block of [`READ_AHEAD`] chunks at a time, so that first
/// sends (which go in order) cost one read per block rather than one per datagram.
struct ChunkReader<'a> {
    /// The file.
    file: &'a File,
    /// The bytes sent.
    size: u64,
    /// The file's ranges sent, one after the other (empty: the file itself).
    ranges: &'a [[u64; 2]],
    /// Bytes per chunk.
    chunk_len: usize,
    /// First chunk in `block`.
    first: u32,
    /// Chunks in `block`.
    count: u32,
    block: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, size: u64, ranges: &'a [[u64; 2]], chunk_len: usize) -> ChunkReader<'a> {
        ChunkReader {
            file,
            size,
            ranges,
            chunk_len,
            first: 0,
            count: 0,
            block: vec![0u8; chunk_len * READ_AHEAD],
        }
    }

    /// The bytes of `chunk`.
    fn chunk(&mut self, chunk: u32) -> std::io::Result<&[u8]> {
        let chunk_len = self.chunk_len as u64;
        if chunk < self.first || chunk >= self.first + self.count {
            let offset = u64::from(chunk) * chunk_len;
            let len = (self.size - offset).min(self.block.len() as u64) as usize;
            read_sent(self.file, self.ranges, &mut self.block[..len], offset)?;
            self.first = chunk;
            self.count = len.div_ceil(self.chunk_len) as u32;
        }
        let start = u64::from(chunk - self.first) * chunk_len;
        let len = (self.size - u64::from(chunk) * chunk_len).min(chunk_len);
        Ok(&self.block[start as usize..(start + len) as usize])
    }
}

/// Reads the bytes sent at `offset` into `buffer`: the file's own, or, when `ranges` are
/// sent, those of the ranges one after the other.
fn read_sent(
    file: &File,
    ranges: &[[u64; 2]],
    buffer: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    if ranges.is_empty() {
        return file.read_exact_at(buffer, offset);
    }
    let (mut done, mut start) = (0usize, 0u64);
    for &[at, len] in ranges {
        let end = start + len;
        let wanted = offset + done as u64;
        if done < buffer.len() && wanted < end {
            let from = wanted - start;
            let take = ((len - from) as usize).min(buffer.len() - done);
            file.read_exact_at(&mut buffer[done..done + take], at + from)?;
            done += take;
        }
        start = end;
    }
    if done < buffer.len() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes sent from ranges are the ranges' bytes one after the other, whatever the
    /// reads' boundaries.
    #[test]
    fn ranges_are_sent_one_after_the_other() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        file.write_all(&content).unwrap();
        let ranges = [[10, 5], [100, 20], [990, 10]];
        let expected: Vec<u8> = ranges
            .iter()
            .flat_map(|[at, len]| content[*at as usize..(*at + *len) as usize].to_vec())
            .collect();
        for start in 0..expected.len() {
            for len in 1..=expected.len() - start {
                let mut buffer = vec![0; len];
                read_sent(&file, &ranges, &mut buffer, start as u64).unwrap();
                assert_eq!(buffer, expected[start..start + len]);
            }
        }
        let mut beyond = vec![0; 2];
        assert!(read_sent(&file, &ranges, &mut beyond, 34).is_err());
    }
}
