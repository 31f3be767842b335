//! Reading a control message back from its JSON.
//!
//! serde reads an internally tagged enum (`{"response":"file_start",…}`) by first copying
//! the whole message into a generic tree, then reading the tree. For the messages that
//! come by the thousand in a sync (a file's start and end, listings of 10,000 entries or
//! hashes, requests naming a thousand files) that roughly doubles the cost of decoding. So
//! when the tag comes first, as this crate writes it, those messages are read straight
//! into the one struct of their fields; anything else takes the general way, and means the
//! same.

use serde::de::DeserializeOwned;

use super::message::{Hello, Response};

/// A message of the control channel, read from its JSON.
pub trait Message: DeserializeOwned {
    /// Reads one message from `json`.
    fn from_json(json: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(json)
    }
}

impl Message for Hello {}

impl Message for Response {
    fn from_json(json: &[u8]) -> serde_json::Result<Response> {
        match leading_tag(json, "response") {
            Some("file_start") => serde_json::from_slice(json).map(Response::FileStart),
            Some("file_end") => serde_json::from_slice(json).map(Response::FileEnd),
            Some("entries") => serde_json::from_slice(json).map(Response::Entries),
            Some("hashes") => serde_json::from_slice(json).map(Response::Hashes),
            _ => serde_json::from_slice(json),
        }
    }
}

/// The tag of a message whose JSON begins with it, exactly as this crate writes it:
/// `{"<key>":"<tag>"`; `None` for any other form (then read the general way).
pub fn leading_tag<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let rest = json.strip_prefix(b"{\"")?;
    let rest = rest.strip_prefix(key.as_bytes())?;
    let rest = rest.strip_prefix(b"\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;
    use crate::protocol::message::{Entries, FileEnd, FileStart, Hashes};
    use crate::share::{Digests, Entry, FileHash, RelPath};
    use crate::time::Timestamp;

    fn rel(name: &str) -> RelPath {
        RelPath::parse(name).unwrap()
    }

    fn mtime() -> Timestamp {
        Timestamp(chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap())
    }

    /// Every message read back the fast way equals the message written, and equals what
    /// the general way reads: the two cannot drift apart.
    #[test]
    fn fast_and_general_reading_agree() {
        let digests = Digests {
            blake3: "b".repeat(64).into(),
            sha256: Some("s".repeat(64).into()),
            md5: None,
        };
        let entry = Entry {
            name: rel("dir/a \"quoted\" name.txt"),
            size: 7,
            mtime: mtime(),
            file_type: "text/plain".into(),
            mode: 0o644,
        };
        let hash = FileHash {
            name: rel("a.txt"),
            size: 7,
            mtime: mtime(),
            blake3: "b".repeat(64).into(),
            sha256: None,
            md5: None,
        };
        let responses = [
            Response::FileStart(FileStart {
                name: rel("d00/e0/file00000.txt"),
                size: 1234,
                mtime: mtime(),
                mode: 0o640,
            }),
            Response::FileEnd(FileEnd { digests }),
            Response::Entries(Entries {
                entries: vec![entry.clone(), entry],
                more: true,
                version: None,
            }),
            Response::Entries(Entries {
                entries: Vec::new(),
                more: false,
                version: Some("v1".into()),
            }),
            Response::Hashes(Hashes {
                hashes: vec![hash],
                more: false,
                version: Some("v2".into()),
            }),
            Response::Error {
                kind: ErrorKind::NotFound,
                message: "no such file: 'x'".into(),
            },
            Response::BatchEnd,
        ];
        for response in responses {
            let json = serde_json::to_vec(&response).unwrap();
            // As written here, the tag comes first: the fast way applies.
            assert!(leading_tag(&json, "response").is_some(), "{json:?}");
            assert_eq!(Response::from_json(&json).unwrap(), response);
            assert_eq!(serde_json::from_slice::<Response>(&json).unwrap(), response);
        }
    }

    /// The answers keep their flat wire form, tag first.
    #[test]
    fn answers_keep_their_wire_form() {
        let start = Response::FileStart(FileStart {
            name: rel("a.txt"),
            size: 3,
            mtime: mtime(),
            mode: 0o644,
        });
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"response":"file_start","name":"a.txt","size":3,"mtime":"2023-11-14T22:13:20.123456789Z","mode":420}"#
        );
        let listed = Response::Hashes(Hashes {
            hashes: Vec::new(),
            more: false,
            version: None,
        });
        assert_eq!(
            serde_json::to_string(&listed).unwrap(),
            r#"{"response":"hashes","hashes":[],"more":false}"#
        );
    }

    /// The fast way refuses what the general way refuses (a missing field, another
    /// message's fields), and a message written another way is read the general way. (A
    /// request naming a path outside: see `requests`' tests.)
    #[test]
    fn odd_json_is_refused_or_read_the_general_way() {
        let short = br#"{"response":"file_start","name":"a.txt","size":3}"#;
        assert!(Response::from_json(short).is_err());
        let crossed = br#"{"response":"entries","hashes":[],"more":false}"#;
        assert!(Response::from_json(crossed).is_err());
        let tag_last = br#"{"digests":{"blake3":"abc"},"response":"file_end"}"#;
        assert!(matches!(
            Response::from_json(tag_last),
            Ok(Response::FileEnd(FileEnd { .. }))
        ));
        let spaced = br#"{ "response": "batch_end" }"#;
        assert_eq!(Response::from_json(spaced).unwrap(), Response::BatchEnd);
    }
}
