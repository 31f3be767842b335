//! Authenticated encryption of every UDP datagram: the keys of one transfer, derived from
//! the authenticated TCP connection that negotiated it, sealing with a packet number that
//! never repeats, and opening with a replay window. The state machines in
//! [`super::proto`] see only plaintext datagrams ([`super::wire`]); the drivers seal what
//! they send and open what they receive, so a datagram that does not authenticate never
//! reaches a state machine, and nothing unauthenticated is ever answered.
//!
//! A sealed datagram is the plaintext datagram with its 12-byte header left in clear (the
//! server's socket routes by its session id), a packet number inserted after it, the rest
//! encrypted with AES-256-GCM and the 16-byte tag appended:
//!
//! ```text
//! 'B' 'X' | kind u8 | 1 u8 | session u64 | pn u64 | AES-256-GCM(rest of the datagram) | tag [16]
//! ```
//!
//! The 20 clear bytes are the AEAD's associated data; the nonce is four zero bytes and
//! `pn`. Each direction has its own key and its own packet numbers (0, 1, 2, ... for every
//! datagram sent, a resend included), so no (key, nonce) pair is ever used twice.
//!
//! Keys: `secret = connection.export_secret("boxsync udp v1" | session u64 | token [16])`
//! (the TLS exporter once the TCP link is TLS), then HKDF-SHA256 (empty salt) extracts from
//! it and expands one key per direction, with the info `"boxsync udp v1 server to client"`
//! and `"boxsync udp v1 client to server"`. Only ring's AEAD and HKDF are used.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use thiserror::Error;

use super::wire::Token;

/// Bytes of the clear header that routes a datagram: magic, kind, format, session.
const HEADER_LEN: usize = 12;

/// Bytes of the packet number.
const PN_LEN: usize = 8;

/// Bytes in clear at the front of a sealed datagram (its associated data).
const CLEAR_LEN: usize = HEADER_LEN + PN_LEN;

/// Bytes of the authentication tag.
const TAG_LEN: usize = 16;

/// Bytes sealing adds to a plaintext datagram: the packet number and the tag.
pub const SEAL_OVERHEAD: usize = PN_LEN + TAG_LEN;

/// Shortest plaintext datagram ([`super::wire`]: a header and its CRC).
const MIN_PLAIN: usize = HEADER_LEN + 4;

/// The format byte of a sealed datagram (a plaintext one has 0 there).
const SEALED: u8 = 1;

/// Packet numbers the replay window covers, the highest one seen included. A datagram
/// older than that is dropped as a replay: reordering on real paths is far shorter (a few
/// milliseconds, a few hundred datagrams at 100 Mbit/s).
pub const REPLAY_WINDOW: u64 = 4096;

/// The label that starts the exporter context and the HKDF infos.
const LABEL: &[u8] = b"boxsync udp v1";

/// The context to give [`crate::protocol::Connection::export_secret`] for one transfer:
/// the label, the session id and the token, so that every transfer gets its own secret.
pub fn exporter_context(session: u64, token: &Token) -> Vec<u8> {
    let mut context = Vec::with_capacity(LABEL.len() + 8 + token.len());
    context.extend_from_slice(LABEL);
    context.extend_from_slice(&session.to_be_bytes());
    context.extend_from_slice(token);
    context
}

/// The two keys of one transfer, one per direction, so that the two directions, which
/// number their datagrams independently, never share a (key, nonce) pair.
pub struct TransferKeys {
    /// Seals DATA (server to client).
    to_client: LessSafeKey,
    /// Seals HELLO and FEEDBACK (client to server).
    to_server: LessSafeKey,
}

impl std::fmt::Debug for TransferKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransferKeys(..)")
    }
}

impl TransferKeys {
    /// Derives both keys from the secret the TCP connection exported for this transfer.
    pub fn derive(secret: &[u8; 32]) -> TransferKeys {
        let prk = Salt::new(HKDF_SHA256, &[]).extract(secret);
        let key = |info: &[u8]| {
            let infos = [info];
            // Expanding 32 bytes from SHA-256's PRK cannot fail (the limit is 255 x 32).
            let okm = prk
                .expand(&infos, &AES_256_GCM)
                .unwrap_or_else(|_| unreachable!("HKDF-SHA256 expands 32 bytes"));
            LessSafeKey::new(UnboundKey::from(okm))
        };
        TransferKeys {
            to_client: key(b"boxsync udp v1 server to client"),
            to_server: key(b"boxsync udp v1 client to server"),
        }
    }

    /// The serving box's side: it seals toward the client and opens what comes from it.
    pub fn for_server(self) -> (Sealer, Opener) {
        (Sealer::new(self.to_client), Opener::new(self.to_server))
    }

    /// The downloading box's side.
    pub fn for_client(self) -> (Sealer, Opener) {
        (Sealer::new(self.to_server), Opener::new(self.to_client))
    }
}

/// Why a datagram could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SealError {
    /// Every packet number was used: sealing more would reuse a nonce.
    #[error("the transfer used up its packet numbers")]
    Exhausted,
    /// Not a plaintext datagram (shorter than a header and its check).
    #[error("not a datagram to seal")]
    NotADatagram,
}

/// Seals the datagrams of one direction. The only way to get a nonce is to seal, and each
/// seal takes the next packet number, so a nonce is never used twice.
pub struct Sealer {
    /// This direction's key.
    key: LessSafeKey,
    /// The next packet number.
    next: u64,
}

impl Sealer {
    fn new(key: LessSafeKey) -> Sealer {
        Sealer { key, next: 0 }
    }

    /// The packet number the next datagram will carry.
    pub fn next_packet_number(&self) -> u64 {
        self.next
    }

    /// Seals, in place, the plaintext datagram that fills `out` from `start` on (so several
    /// sealed datagrams can be batched in one buffer).
    pub fn seal(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        if out.len() < start + MIN_PLAIN {
            return Err(SealError::NotADatagram);
        }
        let pn = self.next;
        self.next = pn.checked_add(1).ok_or(SealError::Exhausted)?;
        out[start + 3] = SEALED;
        let end = out.len();
        out.extend_from_slice(&[0; PN_LEN]);
        out.copy_within(start + HEADER_LEN..end, start + CLEAR_LEN);
        out[start + HEADER_LEN..start + CLEAR_LEN].copy_from_slice(&pn.to_be_bytes());
        let mut clear = [0u8; CLEAR_LEN];
        clear.copy_from_slice(&out[start..start + CLEAR_LEN]);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(pn), Aad::from(clear), &mut out[start + CLEAR_LEN..])
            .map_err(|_| SealError::NotADatagram)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Datagrams dropped before they reached the state machine, by reason. Each end of a
/// transfer keeps its own; they end up in the transfer's statistics and its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Did not authenticate: forged, sealed under another key, or damaged in transit (the
    /// AEAD cannot tell these apart, and need not).
    pub forged: u64,
    /// Authenticated once already, or too old for the replay window to tell.
    pub replayed: u64,
    /// Too short, or not a sealed boxsync datagram at all: dropped before any cryptography.
    pub damaged: u64,
}

impl DropCounts {
    /// Whether anything was dropped.
    pub fn any(&self) -> bool {
        self.forged + self.replayed + self.damaged > 0
    }
}

/// Opens the datagrams of one direction: drops what is damaged, forged or replayed, and
/// counts it.
pub struct Opener {
    /// This direction's key.
    key: LessSafeKey,
    /// Packet numbers already opened.
    window: ReplayWindow,
    /// What was dropped.
    drops: DropCounts,
}

impl Opener {
    fn new(key: LessSafeKey) -> Opener {
        Opener {
            key,
            window: ReplayWindow::default(),
            drops: DropCounts::default(),
        }
    }

    /// What was dropped so far.
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// Checks and decrypts `datagram` in place; returns the plaintext datagram (a part of
    /// `datagram`) if it authenticates and was not opened before, else drops and counts it.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        let len = datagram.len();
        if len < CLEAR_LEN + MIN_PLAIN - HEADER_LEN + TAG_LEN
            || datagram[..2] != *b"BX"
            || datagram[3] != SEALED
        {
            self.drops.damaged += 1;
            return None;
        }
        let mut pn = [0u8; PN_LEN];
        pn.copy_from_slice(&datagram[HEADER_LEN..CLEAR_LEN]);
        let pn = u64::from_be_bytes(pn);
        // No sealer uses the last packet number (see `Sealer::seal`).
        if pn == u64::MAX {
            self.drops.damaged += 1;
            return None;
        }
        // Cheap first: a known replay costs no decryption.
        if !self.window.is_fresh(pn) {
            self.drops.replayed += 1;
            return None;
        }
        let mut clear = [0u8; CLEAR_LEN];
        clear.copy_from_slice(&datagram[..CLEAR_LEN]);
        if self
            .key
            .open_in_place(nonce(pn), Aad::from(clear), &mut datagram[CLEAR_LEN..])
            .is_err()
        {
            self.drops.forged += 1;
            return None;
        }
        // Only an authentic datagram moves the window (a forged one must not).
        self.window.mark(pn);
        // Put the header back in front of the plaintext: the datagram as it was sealed.
        datagram.copy_within(..HEADER_LEN, PN_LEN);
        datagram[PN_LEN + 3] = 0;
        Some(&datagram[PN_LEN..len - TAG_LEN])
    }
}

/// The 96-bit nonce of packet number `pn`: four zero bytes, then `pn`.
fn nonce(pn: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - PN_LEN..].copy_from_slice(&pn.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Which packet numbers were seen: the highest, and a bitmap of the [`REPLAY_WINDOW`]
/// packet numbers that end with it (RFC 4303 §3.4.3's sliding window).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// One past the highest packet number seen (0: none yet).
    top: u64,
    /// Bit `pn % REPLAY_WINDOW` is set when `pn` (within the window) was seen.
    bits: Box<[u64; (REPLAY_WINDOW / 64) as usize]>,
}

impl Default for ReplayWindow {
    fn default() -> ReplayWindow {
        ReplayWindow {
            top: 0,
            bits: Box::new([0; (REPLAY_WINDOW / 64) as usize]),
        }
    }
}

impl ReplayWindow {
    /// Whether `pn` may be new: above everything seen, or within the window and unseen.
    pub fn is_fresh(&self, pn: u64) -> bool {
        if pn >= self.top {
            return true;
        }
        if self.top - pn > REPLAY_WINDOW {
            return false;
        }
        !self.bit(pn)
    }

    /// Records `pn` as seen (call only for an authentic datagram that [`Self::is_fresh`]
    /// accepted), sliding the window if it is the highest yet.
    pub fn mark(&mut self, pn: u64) {
        if pn >= self.top {
            // Clear the bits the window slides over: from the old top to pn, at most a
            // whole window.
            let from = self.top.max(pn.saturating_sub(REPLAY_WINDOW - 1));
            if pn - from >= REPLAY_WINDOW {
                self.bits.fill(0);
            } else {
                for old in from..pn {
                    self.clear(old);
                }
            }
            self.top = pn + 1;
        }
        let (word, bit) = Self::position(pn);
        self.bits[word] |= bit;
    }

    fn position(pn: u64) -> (usize, u64) {
        let slot = pn % REPLAY_WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    fn bit(&self, pn: u64) -> bool {
        let (word, bit) = Self::position(pn);
        self.bits[word] & bit != 0
    }

    fn clear(&mut self, pn: u64) {
        let (word, bit) = Self::position(pn);
        self.bits[word] &= !bit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::udp::wire;

    fn keys(seed: u8) -> TransferKeys {
        TransferKeys::derive(&[seed; 32])
    }

    /// A plaintext HELLO of session 7.
    fn hello() -> Vec<u8> {
        wire::encode_hello(7, &[9; 16])
    }

    /// A sealed datagram opens to exactly the plaintext, in both directions, and is
    /// `SEAL_OVERHEAD` longer; the plaintext's bytes do not appear in it.
    #[test]
    fn seal_then_open_round_trips() {
        let (mut server_seal, mut server_open) = keys(1).for_server();
        let (mut client_seal, mut client_open) = keys(1).for_client();
        let payload = [0xAB; 200];
        let mut plain = Vec::new();
        wire::encode_data(
            &mut plain,
            &wire::Data {
                session: 7,
                chunk: 1,
                tx: 2,
                frontier: 3,
                sent_us: 4,
                payload: &payload,
            },
        );
        let mut sealed = plain.clone();
        server_seal.seal(&mut sealed, 0).unwrap();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert!(
            !sealed.windows(16).any(|w| w == [0xAB; 16]),
            "payload in clear"
        );
        assert_eq!(&sealed[4..12], &plain[4..12], "the session stays in clear");
        assert_eq!(client_open.open(&mut sealed.clone()), Some(&plain[..]));

        let mut sealed = hello();
        client_seal.seal(&mut sealed, 0).unwrap();
        assert_eq!(server_open.open(&mut sealed), Some(&hello()[..]));
    }

    /// Sealing in a batch buffer leaves the datagrams before untouched.
    #[test]
    fn datagrams_seal_one_after_another_in_one_buffer() {
        let (mut seal, _) = keys(2).for_server();
        let (_, mut open) = keys(2).for_client();
        let mut batch = hello();
        seal.seal(&mut batch, 0).unwrap();
        let first = batch.len();
        batch.extend_from_slice(&hello());
        seal.seal(&mut batch, first).unwrap();
        let (a, b) = batch.split_at_mut(first);
        assert_eq!(open.open(a), Some(&hello()[..]));
        assert_eq!(open.open(b), Some(&hello()[..]));
    }

    /// Every datagram carries the next packet number, so nonces never repeat, and a sealer
    /// at the last packet number refuses rather than wrap.
    #[test]
    fn packet_numbers_strictly_increase_and_never_wrap() {
        let (mut seal, _) = keys(3).for_server();
        let mut seen = std::collections::HashSet::new();
        for expected in 0..1000u64 {
            let mut datagram = hello();
            seal.seal(&mut datagram, 0).unwrap();
            let pn = u64::from_be_bytes(datagram[12..20].try_into().unwrap());
            assert_eq!(pn, expected);
            assert!(seen.insert(pn));
        }
        seal.next = u64::MAX;
        assert_eq!(seal.seal(&mut hello(), 0), Err(SealError::Exhausted));
        assert_eq!(seal.seal(&mut hello(), 0), Err(SealError::Exhausted));
    }

    /// A second copy of an authentic datagram is dropped and counted as replayed.
    #[test]
    fn a_replay_is_dropped_and_counted() {
        let (mut seal, _) = keys(4).for_client();
        let (_, mut open) = keys(4).for_server();
        let mut sealed = hello();
        seal.seal(&mut sealed, 0).unwrap();
        assert!(open.open(&mut sealed.clone()).is_some());
        assert_eq!(open.open(&mut sealed.clone()), None);
        assert_eq!(
            open.drops(),
            DropCounts {
                replayed: 1,
                ..DropCounts::default()
            }
        );
    }

    /// The window's edges: reordered datagrams within it are accepted once; the oldest one
    /// it covers is still accepted; one older is refused; a jump past a whole window forgets
    /// everything below; a forged datagram does not move it.
    #[test]
    fn replay_window_edges() {
        let mut window = ReplayWindow::default();
        assert!(window.is_fresh(0));
        window.mark(5);
        for pn in [0, 1, 4] {
            assert!(window.is_fresh(pn), "{pn}");
            window.mark(pn);
            assert!(!window.is_fresh(pn), "{pn} twice");
        }
        assert!(!window.is_fresh(5));
        assert!(window.is_fresh(2) && window.is_fresh(6));

        let mut window = ReplayWindow::default();
        let top = 10 * REPLAY_WINDOW;
        window.mark(top);
        let oldest = top - (REPLAY_WINDOW - 1);
        assert!(window.is_fresh(oldest), "the oldest covered");
        assert!(!window.is_fresh(oldest - 1), "older than the window");
        assert!(!window.is_fresh(0));
        window.mark(oldest);
        assert!(!window.is_fresh(oldest));
        // Sliding by less than a window clears only what it slides over.
        window.mark(top + 3);
        assert!(!window.is_fresh(top));
        assert!(window.is_fresh(top + 1) && window.is_fresh(top + 2));
        // A slot reused after a slide is fresh again for its new packet number.
        window.mark(top + REPLAY_WINDOW + 1);
        assert!(window.is_fresh(top + REPLAY_WINDOW));
        assert!(!window.is_fresh(top + 1), "now older than the window");
        assert!(!window.is_fresh(top + REPLAY_WINDOW + 1));
        // A jump of many windows.
        window.mark(u64::MAX - 1);
        assert!(window.is_fresh(u64::MAX - 2));
        assert!(!window.is_fresh(u64::MAX - 1));
        assert!(window.is_fresh(u64::MAX));

        let (mut seal, _) = keys(5).for_client();
        let (_, mut open) = keys(5).for_server();
        let mut forged = hello();
        seal.seal(&mut forged, 0).unwrap();
        forged[12..20].copy_from_slice(&1000u64.to_be_bytes());
        assert_eq!(open.open(&mut forged), None);
        assert_eq!(open.window.top, 0, "a forgery moved the window");
    }

    /// Every truncation of a sealed datagram is dropped (as damaged when too short to
    /// carry a tag, as forged otherwise), and so is an old plaintext datagram.
    #[test]
    fn truncated_input_is_dropped() {
        let (mut seal, _) = keys(6).for_client();
        let (_, mut open) = keys(6).for_server();
        let mut sealed = hello();
        seal.seal(&mut sealed, 0).unwrap();
        for len in 0..sealed.len() {
            assert_eq!(open.open(&mut sealed[..len].to_vec()), None, "length {len}");
        }
        assert_eq!(open.open(&mut hello()), None);
        let drops = open.drops();
        assert_eq!(drops.forged + drops.damaged, sealed.len() as u64 + 1);
        assert!(drops.damaged > 0 && drops.forged > 0, "{drops:?}");
        assert!(
            open.open(&mut sealed).is_some(),
            "the whole one still opens"
        );
    }

    /// Under the wrong key (another transfer's, or the other direction's), or with any bit
    /// flipped, nothing opens, and the failure is counted as forged.
    #[test]
    fn a_wrong_key_or_a_flipped_bit_is_forged() {
        let (mut seal, _) = keys(7).for_client();
        let mut sealed = hello();
        seal.seal(&mut sealed, 0).unwrap();
        let (_, mut other_transfer) = keys(8).for_server();
        let (_, mut other_direction) = keys(7).for_client();
        assert_eq!(other_transfer.open(&mut sealed.clone()), None);
        assert_eq!(other_direction.open(&mut sealed.clone()), None);
        assert_eq!(other_transfer.drops().forged, 1);
        assert_eq!(other_direction.drops().forged, 1);
        let (_, mut open) = keys(7).for_server();
        for i in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 0x01;
            assert_eq!(open.open(&mut damaged), None, "byte {i}");
        }
        // Bytes 0, 1 and 3 are checked before any cryptography.
        assert_eq!(open.drops().damaged, 3);
        assert_eq!(open.drops().forged, sealed.len() as u64 - 3);
        assert!(open.open(&mut sealed).is_some());
    }

    /// Different transfers (session or token) get different exporter contexts.
    #[test]
    fn every_transfer_has_its_own_context() {
        let a = exporter_context(1, &[0; 16]);
        assert_ne!(a, exporter_context(2, &[0; 16]));
        assert_ne!(a, exporter_context(1, &[1; 16]));
        assert!(a.starts_with(LABEL));
    }
}
