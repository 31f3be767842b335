//! Frames: the unit of the TCP wire protocol.
//!
//! ```text
//! +------+----------------+-------------------+
//! | kind | length (u32 BE)| payload (length)  |
//! +------+----------------+-------------------+
//! ```
//! `kind` is `C` for a control message (UTF-8 JSON) or `D` for raw file bytes. Each kind has
//! its own size limit so that a peer cannot make this box allocate without bound.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Largest control (JSON) payload accepted.
pub const MAX_CONTROL_LEN: usize = 1024 * 1024;

/// Largest data payload accepted.
pub const MAX_DATA_LEN: usize = 1024 * 1024;

/// Bytes of file content in each data frame this box sends (a receiver accepts up to
/// [`MAX_DATA_LEN`]); a reader's buffer holds one whole.
pub const DATA_CHUNK: usize = 256 * 1024;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 5;

const KIND_CONTROL: u8 = b'C';
const KIND_DATA: u8 = b'D';

/// One frame off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message.
    Control(Bytes),
    /// Raw bytes of a file being transferred.
    Data(Bytes),
}

/// Why bytes on the wire are not a valid frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The kind byte is neither `C` nor `D`.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The announced length is over the limit for its kind.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit for that kind.
        limit: usize,
    },
}

impl Frame {
    /// Splits one complete frame off the front of `buffer`.
    ///
    /// `Ok(None)` means "not enough bytes yet": read more and call again. A bad header is an
    /// error as soon as its five bytes are in, before any payload is buffered.
    pub fn parse(buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = buffer[0];
        let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        let limit = match kind {
            KIND_CONTROL => MAX_CONTROL_LEN,
            KIND_DATA => MAX_DATA_LEN,
            other => return Err(FrameError::UnknownKind(other)),
        };
        if len > limit {
            return Err(FrameError::TooLarge { len, limit });
        }
        if buffer.len() < HEADER_LEN + len {
            buffer.reserve(HEADER_LEN + len - buffer.len());
            return Ok(None);
        }
        buffer.advance(HEADER_LEN);
        let payload = buffer.split_to(len).freeze();
        Ok(Some(match kind {
            KIND_CONTROL => Frame::Control(payload),
            _ => Frame::Data(payload),
        }))
    }

    /// How many bytes the frame at the front of `buffer` still lacks, once its header is
    /// in (`None` before that, or when the header is invalid: [`Frame::parse`] says why).
    pub fn missing(buffer: &[u8]) -> Option<usize> {
        if buffer.len() < HEADER_LEN || !matches!(buffer[0], KIND_CONTROL | KIND_DATA) {
            return None;
        }
        let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        (HEADER_LEN + len).checked_sub(buffer.len())
    }

    /// The header announcing a payload of `len` bytes of this frame's kind.
    pub fn header(control: bool, len: usize) -> [u8; HEADER_LEN] {
        let kind = if control { KIND_CONTROL } else { KIND_DATA };
        let len = (len as u32).to_be_bytes();
        [kind, len[0], len[1], len[2], len[3]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame split across reads parses only once complete, and leaves the rest buffered.
    #[test]
    fn parses_incrementally() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&Frame::header(true, 2));
        wire.extend_from_slice(b"{}");
        wire.extend_from_slice(&Frame::header(false, 3));
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&wire[..4]);
        assert_eq!(Frame::parse(&mut buffer), Ok(None));
        buffer.extend_from_slice(&wire[4..]);
        assert_eq!(
            Frame::parse(&mut buffer),
            Ok(Some(Frame::Control(Bytes::from_static(b"{}"))))
        );
        assert_eq!(Frame::parse(&mut buffer), Ok(None));
        buffer.extend_from_slice(b"xyz");
        assert_eq!(
            Frame::parse(&mut buffer),
            Ok(Some(Frame::Data(Bytes::from_static(b"xyz"))))
        );
    }

    /// Once a header is in, the reader knows how much of its frame is still to come, so
    /// that it can read a large data frame up to its end and no further.
    #[test]
    fn tells_what_a_frame_still_lacks() {
        let mut buffer = BytesMut::from(&Frame::header(false, 10)[..3]);
        assert_eq!(Frame::missing(&buffer), None);
        buffer.extend_from_slice(&Frame::header(false, 10)[3..]);
        assert_eq!(Frame::missing(&buffer), Some(10));
        buffer.extend_from_slice(b"0123");
        assert_eq!(Frame::missing(&buffer), Some(6));
        assert_eq!(Frame::missing(b"Zxxxx"), None);
    }

    /// Oversized and unknown frames are refused from their header alone.
    #[test]
    fn refuses_bad_headers() {
        let mut buffer = BytesMut::from(&Frame::header(true, MAX_CONTROL_LEN + 1)[..]);
        assert!(matches!(
            Frame::parse(&mut buffer),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buffer = BytesMut::from(&b"Zxxxx"[..]);
        assert_eq!(
            Frame::parse(&mut buffer),
            Err(FrameError::UnknownKind(b'Z'))
        );
    }
}
