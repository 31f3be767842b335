//! The domain's shared nouns: a box's id, one version of a file, a transport. Each concept
//! has exactly one type, used on the wire, by sync and in transfer results alike.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::share::RelPath;
use crate::time::Timestamp;

/// Hex digits in a box id.
const BOX_ID_LEN: usize = 16;

/// A box's id: exactly 16 hex digits, checked wherever one is read (from a peer,
/// from disk), so that a peer's id can never become a path, an escape sequence or an
/// unbounded string. Sync names its per-peer record after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BoxId(String);

/// Why a text is not a box id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not a box id (16 hex digits): {0:?}")]
pub struct BadBoxId(String);

impl BoxId {
    /// Reads a box id, refusing anything but 16 hex digits. The case is kept as written:
    /// ids are compared as text (the smaller keeps a conflict's name) and name the peer's
    /// record, so folding it would change both for a hand-written id.
    pub fn parse(text: &str) -> Result<BoxId, BadBoxId> {
        if text.len() == BOX_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(BoxId(text.to_string()))
        } else {
            // Bounded, so that an error message cannot carry a peer's megabyte.
            Err(BadBoxId(text.chars().take(40).collect()))
        }
    }

    /// A new random id, for a box's first start.
    pub fn random() -> BoxId {
        use rand::RngExt;
        BoxId(format!("{:016x}", rand::rng().random::<u64>()))
    }

    /// The id as text (safe as a file name: hex digits only).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BoxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BoxId {
    type Err = BadBoxId;

    fn from_str(text: &str) -> Result<BoxId, BadBoxId> {
        BoxId::parse(text)
    }
}

impl TryFrom<String> for BoxId {
    type Error = BadBoxId;

    fn try_from(text: String) -> Result<BoxId, BadBoxId> {
        BoxId::parse(&text)
    }
}

impl From<BoxId> for String {
    fn from(id: BoxId) -> String {
        id.0
    }
}

/// One version of a file under its name: the content (named by its BLAKE3) and the
/// metadata sync carries with it. What a server sent, what a box says it installed, and
/// what a download brought are all this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// The file.
    pub name: RelPath,
    /// BLAKE3 of the content, hex.
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
}

/// How a file's bytes travel: chosen by a person for `download`, by a peer's address
/// (`udp://…`) for sync, and reported in a transfer's result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The box's TCP connection (the default).
    #[default]
    Tcp,
    /// UDP datagrams, negotiated on the TCP connection.
    Udp,
}

impl Transport {
    /// The name a person types and sees (`tcp`, `udp`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box id is 16 hex digits and nothing else: no path, no separator, no control
    /// character, no length beyond 16, whatever a peer sends.
    #[test]
    fn box_ids_are_hex_only() {
        let id = BoxId::parse("00ff00ff00ff00ff").unwrap();
        assert_eq!(id.as_str(), "00ff00ff00ff00ff");
        let upper = BoxId::parse("00FF00FF00FF00FF").unwrap();
        assert_eq!(upper.as_str(), "00FF00FF00FF00FF", "the case is kept");
        for bad in [
            "",
            "../../../x000000",
            "/etc/passwd00000",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "0123456789abcde",
            "0123456789abcd\u{1b}]",
            "ffffffffffffffff/",
        ] {
            assert!(BoxId::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"00ff00ff00ff00ff\"");
        assert!(serde_json::from_str::<BoxId>("\"../x\"").is_err());
        assert_ne!(BoxId::random(), BoxId::random());
        assert_eq!(BoxId::random().as_str().len(), BOX_ID_LEN);
    }

    /// A refused id's message is bounded, so that a log line cannot carry a megabyte.
    #[test]
    fn a_refused_id_is_bounded_in_its_error() {
        let long = "x".repeat(1_000_000);
        let error = BoxId::parse(&long).unwrap_err();
        assert!(error.to_string().len() < 100);
    }
}
