//! The domain's shared nouns: a box's id, one version of a file, a transport. Each concept
//! has exactly one type, used on the wire, by sync and in transfer results alike.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::share::RelPath;
use crate::time::Timestamp;

/// Characters of a box ID, check characters included (dashes not counted).
const BOX_ID_CHARS: usize = 56;

/// A check character follows each run of this many data characters.
const CHECKED_RUN: usize = 13;

/// Characters shown between dashes.
const DISPLAY_GROUP: usize = 7;

/// The base-32 alphabet of box IDs (RFC 4648): no 0, 1, 8 or 9, so no O/0 or I/1 mix-up.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A box's ID: the SHA-256 of its public key (the key that authenticates every link it
/// makes), written for people as 8 groups of 7 base-32 characters. Every 14th character is
/// a Luhn mod 32 check over the 13 before it, so a typed ID with a wrong or swapped
/// character is caught before it is trusted. Being only `A-Z`, `2-7` and `-`, an ID can
/// never become a path, an escape sequence or an unbounded string; sync names its per-peer
/// record after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BoxId(String);

/// Why a text is not a box ID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadBoxId {
    /// Not the shape of an ID at all.
    #[error("not a box ID: {0:?} (`boxsync id` prints one: 8 groups of 7 characters)")]
    Malformed(String),
    /// The shape of an ID, but a check character does not match: a typo.
    #[error(
        "box ID {id:?} has a typo in characters {first}-{last}: copy it again from `boxsync id` on that box"
    )]
    Typo {
        /// The ID as given (bounded).
        id: String,
        /// First character (1-based, dashes not counted) of the run that fails its check.
        first: usize,
        /// Last character of that run, its check character included.
        last: usize,
    },
}

impl BoxId {
    /// Reads a box ID as a person or a peer writes it: case and dashes (or spaces) do not
    /// matter; every check character must match.
    pub fn parse(text: &str) -> Result<BoxId, BadBoxId> {
        // Bounded, so that an error message cannot carry a peer's megabyte (an ID is
        // recognisable by its start).
        let shown = || text.chars().take(24).collect::<String>();
        if text.len() > 2 * BOX_ID_CHARS {
            return Err(BadBoxId::Malformed(shown()));
        }
        let chars: Vec<u8> = text
            .bytes()
            .filter(|b| *b != b'-' && *b != b' ')
            .map(|b| b.to_ascii_uppercase())
            .collect();
        if chars.len() != BOX_ID_CHARS || !chars.iter().all(|b| ALPHABET.contains(b)) {
            return Err(BadBoxId::Malformed(shown()));
        }
        for (run, checked) in chars.chunks(CHECKED_RUN + 1).enumerate() {
            let (data, check) = checked.split_at(CHECKED_RUN);
            if luhn32(data) != check[0] {
                return Err(BadBoxId::Typo {
                    id: shown(),
                    first: run * (CHECKED_RUN + 1) + 1,
                    last: (run + 1) * (CHECKED_RUN + 1),
                });
            }
        }
        Ok(BoxId(display(&chars)))
    }

    /// The ID of the box whose public key is `public_key` (its DER SubjectPublicKeyInfo).
    pub fn from_public_key(public_key: &[u8]) -> BoxId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(public_key);
        let data = data_encoding::BASE32_NOPAD.encode(&digest);
        let mut chars = Vec::with_capacity(BOX_ID_CHARS);
        for run in data.as_bytes().chunks(CHECKED_RUN) {
            chars.extend_from_slice(run);
            chars.push(luhn32(run));
        }
        BoxId(display(&chars))
    }

    /// The ID as text, in its canonical form (upper case, dashes): safe as a file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its first group: enough for a person to tell boxes apart in a list or a conflict
    /// copy's name, not to authenticate one.
    pub fn short(&self) -> &str {
        &self.0[..DISPLAY_GROUP]
    }
}

/// `chars` (56 ID characters) in groups of 7 joined by dashes.
fn display(chars: &[u8]) -> String {
    chars
        .chunks(DISPLAY_GROUP)
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// The Luhn mod 32 check character of `data` (characters of [`ALPHABET`]): it changes
/// when any one character changes, and when most pairs of neighbours swap.
fn luhn32(data: &[u8]) -> u8 {
    const N: u32 = 32;
    let mut sum = 0;
    // Doubling starts from the rightmost character, as in the decimal Luhn check.
    for (i, c) in data.iter().rev().enumerate() {
        let value = ALPHABET.iter().position(|a| a == c).unwrap_or(0) as u32;
        let weighted = if i % 2 == 0 { value * 2 } else { value };
        sum += weighted / N + weighted % N;
    }
    ALPHABET[((N - sum % N) % N) as usize]
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

/// Where to reach a box, and which box must answer there: `ID@HOST:PORT`. The ID is
/// pinned: a connection to the address is refused unless the key behind it hashes to ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// The box that must answer.
    pub id: BoxId,
    /// `HOST:PORT`, as given.
    pub addr: String,
}

/// Why a text is not `ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadPeerAddress {
    /// No `ID@` in front of the address.
    #[error(
        "bad peer address '{0}': no box ID; write ID@HOST:PORT (`boxsync id` on that box prints its ID)"
    )]
    NoId(String),
    /// The ID part is not an ID.
    #[error(transparent)]
    Id(#[from] BadBoxId),
    /// The address part is not `HOST:PORT`.
    #[error(transparent)]
    Addr(#[from] crate::parse::BadPeerAddress),
}

impl PeerAddress {
    /// Reads `ID@HOST:PORT`.
    pub fn parse(text: &str) -> Result<PeerAddress, BadPeerAddress> {
        let Some((id, addr)) = text.rsplit_once('@') else {
            let shown: String = text.chars().take(80).collect();
            return Err(BadPeerAddress::NoId(shown));
        };
        Ok(PeerAddress {
            id: BoxId::parse(id)?,
            addr: crate::parse::check_peer_address(addr)?.to_string(),
        })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

/// One version of a file under its name: the content (named by its BLAKE3) and the
/// metadata sync carries with it. What a server sent, what a box says it installed, and
/// what a download brought are all this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// The file.
    pub name: RelPath,
    /// BLAKE3 of the content, hex: exactly 64 lowercase hex digits when read from a peer,
    /// so that a notice cannot carry a megabyte in its place.
    #[serde(deserialize_with = "blake3_hex")]
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
}

/// What a box tells a peer it now agrees on with it, so that both records hold the same:
/// it holds this version of one of the peer's files (`installed`), or it lacks a path the
/// peer lacks too (`removed`). Untagged: an installed version reads as itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Agreement {
    /// This box now holds this version of the peer's file, under that name.
    Holds(FileVersion),
    /// This box, like the peer, no longer holds this path.
    Lacks {
        /// The path both lack.
        removed: RelPath,
    },
}

/// Reads a BLAKE3 digest as 64 lowercase hex digits, refusing anything else.
fn blake3_hex<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(text)
    } else {
        Err(serde::de::Error::custom(
            "a BLAKE3 digest is 64 lowercase hex digits",
        ))
    }
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

    /// An ID for tests, from a seed.
    fn id(seed: u8) -> BoxId {
        BoxId::from_public_key(&[seed; 44])
    }

    /// An ID reads back as itself in any case and with or without dashes, and it is only
    /// ever A-Z, 2-7 and dashes: no path, no separator, no control character.
    #[test]
    fn box_ids_round_trip_and_stay_plain() {
        let id = id(1);
        assert_eq!(id.as_str().len(), 63);
        assert!(
            id.as_str()
                .bytes()
                .all(|b| ALPHABET.contains(&b) || b == b'-')
        );
        assert_eq!(BoxId::parse(id.as_str()).unwrap(), id);
        assert_eq!(BoxId::parse(&id.as_str().to_lowercase()).unwrap(), id);
        assert_eq!(BoxId::parse(&id.as_str().replace('-', "")).unwrap(), id);
        assert_eq!(id.short(), &id.as_str()[..7]);
        assert_ne!(id, self::id(2));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<BoxId>(&json).unwrap(), id);
        for bad in [
            "",
            "../../../x",
            "/etc/passwd",
            "0123456789abcdef",
            &id.as_str()[..62],
            &format!("{id}A"),
            &id.as_str().replacen('-', "\u{1b}", 1),
        ] {
            assert!(BoxId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<BoxId>("\"../x\"").is_err());
    }

    /// Every ID with one character typed wrong is caught, and says where.
    #[test]
    fn one_wrong_character_is_caught() {
        let id = id(3);
        let chars: Vec<u8> = id.as_str().bytes().filter(|b| *b != b'-').collect();
        for position in 0..chars.len() {
            for &other in ALPHABET.iter().filter(|c| **c != chars[position]) {
                let mut typo = chars.clone();
                typo[position] = other;
                let text = String::from_utf8(typo).unwrap();
                match BoxId::parse(&text) {
                    Err(BadBoxId::Typo { first, last, .. }) => {
                        assert!(first <= position + 1 && position < last, "{text}")
                    }
                    other => panic!("{text}: {other:?}"),
                }
            }
        }
    }

    /// Most swaps of two neighbouring characters are caught too.
    #[test]
    fn swapped_neighbours_are_mostly_caught() {
        let (mut swaps, mut caught) = (0, 0);
        for seed in 0..20 {
            let chars: Vec<u8> = id(seed).as_str().bytes().filter(|b| *b != b'-').collect();
            for position in 0..chars.len() - 1 {
                if chars[position] == chars[position + 1] {
                    continue;
                }
                let mut swapped = chars.clone();
                swapped.swap(position, position + 1);
                swaps += 1;
                caught +=
                    usize::from(BoxId::parse(std::str::from_utf8(&swapped).unwrap()).is_err());
            }
        }
        assert!(caught * 100 >= swaps * 90, "{caught} of {swaps}");
    }

    /// `ID@HOST:PORT` is read whole; a bare address says that the ID is missing.
    #[test]
    fn peer_addresses_carry_an_id() {
        let id = id(4);
        let peer = PeerAddress::parse(&format!("{id}@127.0.0.1:7002")).unwrap();
        assert_eq!(peer.id, id);
        assert_eq!(peer.addr, "127.0.0.1:7002");
        assert_eq!(peer.to_string(), format!("{id}@127.0.0.1:7002"));
        assert!(matches!(
            PeerAddress::parse("127.0.0.1:7002"),
            Err(BadPeerAddress::NoId(_))
        ));
        assert!(PeerAddress::parse(&format!("{id}@nowhere")).is_err());
    }

    /// A refused id's message is bounded, so that a log line cannot carry a megabyte.
    #[test]
    fn a_refused_id_is_bounded_in_its_error() {
        let long = "x".repeat(1_000_000);
        let error = BoxId::parse(&long).unwrap_err();
        assert!(error.to_string().len() < 100);
    }
}
