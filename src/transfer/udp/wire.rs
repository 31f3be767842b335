//! The plaintext datagrams of a UDP transfer, as the state machines read and write them.
//!
//! Every datagram starts with the same 12-byte header and ends with a CRC-32 of everything
//! before it; a datagram whose CRC does not match, whose magic is wrong or whose length does
//! not fit its kind is dropped. All integers are big-endian. On the network every datagram
//! travels sealed ([`super::seal`]: the header in clear, a packet number, the rest
//! encrypted and authenticated); the CRC is then redundant, and kept so that the state
//! machines, tested without keys, still reject damage on their own.
//!
//! ```text
//! header    'B' 'X' | kind u8 | 0 u8 | session u64
//! DATA      header | chunk u32 | tx u32 | frontier u32 | sent_us u64 | payload | crc u32
//! HELLO     header | token [16] | crc u32
//! FEEDBACK  header | token [16] | received u64 | bytes u64 | highest_tx u32 | clock_us u64
//!           | echo_us u64 | hold_us u32 | queue_us u32 | cumulative u32 | n u16
//!           | n x (start u32, end u32) | crc u32
//! ```

use thiserror::Error;

/// First two bytes of every datagram.
const MAGIC: [u8; 2] = *b"BX";

const KIND_DATA: u8 = 1;
const KIND_HELLO: u8 = 2;
const KIND_FEEDBACK: u8 = 3;

const HEADER_LEN: usize = 12;
const CRC_LEN: usize = 4;

/// Bytes a DATA datagram adds around its payload (before sealing).
pub const DATA_OVERHEAD: usize = HEADER_LEN + 4 + 4 + 4 + 8 + CRC_LEN;

/// Largest UDP payload boxsync sends, sealed: with IP and UDP headers it stays under a
/// 1,500-byte MTU, so datagrams are never fragmented on ordinary links.
pub const MAX_DATAGRAM: usize = 1400;

/// Largest plaintext datagram: what sealing leaves of [`MAX_DATAGRAM`].
pub const MAX_PLAIN: usize = MAX_DATAGRAM - super::seal::SEAL_OVERHEAD;

/// File bytes per DATA datagram.
pub const CHUNK_LEN: usize = MAX_PLAIN - DATA_OVERHEAD;

/// Missing ranges that fit in one FEEDBACK datagram.
pub const MAX_RANGES: usize = (MAX_PLAIN - HEADER_LEN - FEEDBACK_FIXED - CRC_LEN) / 8;

/// Bytes of a FEEDBACK datagram between the header and the ranges.
const FEEDBACK_FIXED: usize = 16 + 8 + 8 + 4 + 8 + 8 + 4 + 4 + 4 + 2;

/// The secret that proves a UDP endpoint is the client that negotiated the session.
pub type Token = [u8; 16];

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// File bytes, sender to receiver.
    Data(Data<'a>),
    /// "I am the receiver of this session", receiver to sender, until data flows.
    Hello {
        /// The session.
        session: u64,
        /// The session's token.
        token: Token,
    },
    /// What has arrived, receiver to sender, every few milliseconds.
    Feedback(Feedback),
}

/// One chunk of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data<'a> {
    /// The session.
    pub session: u64,
    /// Index of the chunk in the file.
    pub chunk: u32,
    /// Transmission number: counts every DATA datagram sent, first sends and resends alike,
    /// so the receiver can measure loss.
    pub tx: u32,
    /// Chunks the sender has sent at least once: everything below is fair to report
    /// missing.
    pub frontier: u32,
    /// Sender's clock when sent, microseconds since the session began.
    pub sent_us: u64,
    /// The chunk's bytes.
    pub payload: &'a [u8],
}

/// The receiver's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Feedback {
    /// The session.
    pub session: u64,
    /// The session's token.
    pub token: Token,
    /// Valid DATA datagrams received so far (duplicates included).
    pub received: u64,
    /// Payload bytes received so far.
    pub bytes: u64,
    /// Highest transmission number seen.
    pub highest_tx: u32,
    /// Receiver's clock, microseconds since it started.
    pub clock_us: u64,
    /// `sent_us` of the latest DATA datagram received, echoed for round-trip time.
    pub echo_us: u64,
    /// Microseconds between receiving that datagram and sending this report.
    pub hold_us: u32,
    /// Queueing delay seen since the last report: one-way delay above its minimum.
    pub queue_us: u32,
    /// Every chunk below this has arrived.
    pub cumulative: u32,
    /// Missing chunk ranges `[start, end)` above `cumulative`, below the frontier.
    pub missing: Vec<(u32, u32)>,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Too short, or a length that does not fit its kind.
    #[error("malformed datagram")]
    Malformed,
    /// Wrong magic: not ours.
    #[error("not a boxsync datagram")]
    Foreign,
    /// The CRC does not match: damaged in transit.
    #[error("damaged datagram")]
    Damaged,
}

/// Appends an encoded DATA datagram to `out` (several can be batched in one buffer).
pub fn encode_data(out: &mut Vec<u8>, data: &Data<'_>) {
    let start = out.len();
    header(out, KIND_DATA, data.session);
    out.extend_from_slice(&data.chunk.to_be_bytes());
    out.extend_from_slice(&data.tx.to_be_bytes());
    out.extend_from_slice(&data.frontier.to_be_bytes());
    out.extend_from_slice(&data.sent_us.to_be_bytes());
    out.extend_from_slice(data.payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes a HELLO datagram.
pub fn encode_hello(session: u64, token: &Token) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 16 + CRC_LEN);
    header(&mut out, KIND_HELLO, session);
    out.extend_from_slice(token);
    seal(&mut out);
    out
}

/// Encodes a FEEDBACK datagram; ranges beyond [`MAX_RANGES`] are left for the next one.
pub fn encode_feedback(feedback: &Feedback) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    header(&mut out, KIND_FEEDBACK, feedback.session);
    out.extend_from_slice(&feedback.token);
    out.extend_from_slice(&feedback.received.to_be_bytes());
    out.extend_from_slice(&feedback.bytes.to_be_bytes());
    out.extend_from_slice(&feedback.highest_tx.to_be_bytes());
    out.extend_from_slice(&feedback.clock_us.to_be_bytes());
    out.extend_from_slice(&feedback.echo_us.to_be_bytes());
    out.extend_from_slice(&feedback.hold_us.to_be_bytes());
    out.extend_from_slice(&feedback.queue_us.to_be_bytes());
    out.extend_from_slice(&feedback.cumulative.to_be_bytes());
    let ranges = &feedback.missing[..feedback.missing.len().min(MAX_RANGES)];
    out.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
    for (start, end) in ranges {
        out.extend_from_slice(&start.to_be_bytes());
        out.extend_from_slice(&end.to_be_bytes());
    }
    seal(&mut out);
    out
}

/// Checks and decodes a datagram.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, WireError> {
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(WireError::Malformed);
    }
    if bytes[..2] != MAGIC {
        return Err(WireError::Foreign);
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(WireError::Damaged);
    }
    let kind = body[2];
    let session = u64::from_be_bytes(take(body, 4));
    let mut reader = Reader {
        bytes: &body[HEADER_LEN..],
    };
    let datagram = match kind {
        KIND_DATA => Datagram::Data(Data {
            session,
            chunk: reader.u32()?,
            tx: reader.u32()?,
            frontier: reader.u32()?,
            sent_us: reader.u64()?,
            payload: reader.rest(),
        }),
        KIND_HELLO => Datagram::Hello {
            session,
            token: reader.token()?,
        },
        KIND_FEEDBACK => {
            let mut feedback = Feedback {
                session,
                token: reader.token()?,
                received: reader.u64()?,
                bytes: reader.u64()?,
                highest_tx: reader.u32()?,
                clock_us: reader.u64()?,
                echo_us: reader.u64()?,
                hold_us: reader.u32()?,
                queue_us: reader.u32()?,
                cumulative: reader.u32()?,
                missing: Vec::new(),
            };
            let n = reader.u16()? as usize;
            if n > MAX_RANGES {
                return Err(WireError::Malformed);
            }
            for _ in 0..n {
                feedback.missing.push((reader.u32()?, reader.u32()?));
            }
            if !reader.rest().is_empty() {
                return Err(WireError::Malformed);
            }
            Datagram::Feedback(feedback)
        }
        _ => return Err(WireError::Malformed),
    };
    Ok(datagram)
}

fn header(out: &mut Vec<u8>, kind: u8, session: u64) {
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&session.to_be_bytes());
}

fn seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

/// Reads big-endian fields off the front of a slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn field<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        if self.bytes.len() < N {
            return Err(WireError::Malformed);
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        Ok(take(head, 0))
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.field().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.field().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.field().map(u64::from_be_bytes)
    }
    fn token(&mut self) -> Result<Token, WireError> {
        self.field()
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind round-trips, and DATA datagrams stay within the size limit.
    #[test]
    fn round_trips() {
        let payload = vec![7u8; CHUNK_LEN];
        let data = Data {
            session: 9,
            chunk: 3,
            tx: 4,
            frontier: 5,
            sent_us: 6,
            payload: &payload,
        };
        let mut out = Vec::new();
        encode_data(&mut out, &data);
        assert_eq!(out.len(), MAX_PLAIN);
        assert_eq!(decode(&out), Ok(Datagram::Data(data)));

        let hello = encode_hello(1, &[2; 16]);
        assert_eq!(
            decode(&hello),
            Ok(Datagram::Hello {
                session: 1,
                token: [2; 16]
            })
        );

        let feedback = Feedback {
            session: 1,
            token: [3; 16],
            missing: (0..MAX_RANGES as u32 + 10)
                .map(|i| (i * 2, i * 2 + 1))
                .collect(),
            ..Feedback::default()
        };
        let bytes = encode_feedback(&feedback);
        assert!(bytes.len() <= MAX_PLAIN);
        let Ok(Datagram::Feedback(decoded)) = decode(&bytes) else {
            panic!("feedback did not decode");
        };
        assert_eq!(decoded.missing.len(), MAX_RANGES);
    }

    /// Any single damaged byte is caught by the CRC (CRC-32 detects every burst of up to
    /// 32 bits).
    #[test]
    fn every_flipped_byte_is_caught() {
        let payload = vec![1u8; 100];
        let mut out = Vec::new();
        encode_data(
            &mut out,
            &Data {
                session: 1,
                chunk: 0,
                tx: 0,
                frontier: 1,
                sent_us: 0,
                payload: &payload,
            },
        );
        for i in 0..out.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = out.clone();
                damaged[i] ^= flip;
                assert!(decode(&damaged).is_err(), "byte {i} flip {flip:#x} passed");
            }
        }
        assert!(decode(&out[..out.len() - 1]).is_err());
    }
}
