//! The secure channel under every peer connection: TLS 1.3 (rustls), both sides
//! authenticated by raw Ed25519 public keys (RFC 7250) instead of certificates. A box's ID
//! is the hash of its key ([`BoxId::from_public_key`]): the dialing side pins the ID it
//! was given, and the accepting side learns the caller's ID from the key it proved it holds,
//! then asks its trust list (the server does; see [`crate::server`]).
//!
//! Nothing is negotiable down: TLS 1.3 only, no resumption (every connection proves its key
//! afresh), no SNI (the name would say "boxsync" in clear).

use std::io;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{AlwaysResolvesServerRawPublicKeys, NoServerSessionStorage};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::Identity;
use crate::types::BoxId;

use super::HandshakeError;
use super::frame::{Frame, HEADER_LEN, MAX_CONTROL_LEN};
use super::message::{ErrorKind, Response};

/// The encrypted, mutually authenticated stream a peer connection runs over.
pub type TlsLink = tokio_rustls::TlsStream<TcpStream>;

/// The first byte of every TLS connection (a handshake record): a connection that opens
/// with anything else is a client of the old plaintext protocol, or not boxsync at all.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a client of the old plaintext protocol may take to send its greeting before
/// it is told to upgrade.
const PLAINTEXT_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The label of the keying material exported for a side channel (RFC 8446 §7.5).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-boxsync-side-channel-v1";

/// What this box says to a client of the old plaintext protocol, in that protocol.
const PLAINTEXT_REFUSAL: &str = "this box speaks boxsync protocol 3 only (TLS 1.3 with box IDs): \
upgrade boxsync on the connecting box, then trust each other's IDs (`boxsync id`, `boxsync trust ID`)";

/// ring's primitives, with AES-128-GCM preferred: the fastest suite with AES-NI, and
/// ample for a link (all three TLS 1.3 suites stay available).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// The server side's TLS settings for this box: its key, and any caller's key accepted
/// once the caller proves it holds it (whether the caller is trusted is asked next).
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(AnyBoxKey {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
            identity.certified_key(),
        )));
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Opens TLS on `stream` as `identity`, refusing any server whose key is not `expected`'s.
pub async fn connect(
    stream: TcpStream,
    identity: &Identity,
    expected: &BoxId,
) -> Result<TlsLink, HandshakeError> {
    let provider = provider();
    let pinned = Arc::new(PinnedBox {
        expected: expected.clone(),
        seen: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&pinned) as Arc<dyn ServerCertVerifier>)
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
            identity.certified_key(),
        )));
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    let name = ServerName::try_from("box.boxsync.invalid").map_err(tls_error)?;
    match TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
    {
        Ok(stream) => Ok(tokio_rustls::TlsStream::Client(stream)),
        Err(e) => match pinned.seen() {
            Some(seen) if &seen != expected => Err(HandshakeError::WrongBox {
                expected: expected.clone(),
                seen,
            }),
            _ => Err(classify(e)),
        },
    }
}

/// Accepts TLS on `stream` with `config`; returns the stream and the caller's ID (proven:
/// it signed the handshake with the key the ID is the hash of). A client of the old
/// plaintext protocol is told, in its own framing, what to do.
pub async fn accept(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(TlsLink, BoxId), HandshakeError> {
    let mut first = [0u8; 1];
    let peeked = stream.peek(&mut first).await?;
    if peeked == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        let refusal = Response::Error {
            kind: ErrorKind::Handshake,
            message: PLAINTEXT_REFUSAL.to_string(),
        };
        // Read what the client sent first (its greeting, up to the old protocol's largest
        // frame, briefly): closing on unread bytes would reset the connection and could
        // destroy the refusal before the client reads it.
        let _ = tokio::time::timeout(PLAINTEXT_DRAIN, async {
            let mut header = Vec::with_capacity(HEADER_LEN);
            let mut drained = 0usize;
            let mut scratch = vec![0u8; 64 * 1024];
            loop {
                let read = match stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                let wanted = HEADER_LEN - header.len();
                header.extend_from_slice(&scratch[..read.min(wanted)]);
                drained += read;
                let frame_len = Frame::missing(&header).map(|missing| HEADER_LEN + missing);
                let whole = match frame_len {
                    Some(len) => drained >= len.min(MAX_CONTROL_LEN + HEADER_LEN),
                    None => header.len() == HEADER_LEN,
                };
                if whole {
                    break;
                }
            }
        })
        .await;
        if let Ok(payload) = serde_json::to_vec(&refusal) {
            let mut frame = Frame::header(true, payload.len()).to_vec();
            frame.extend_from_slice(&payload);
            let _ = stream.write_all(&frame).await;
            let _ = stream.shutdown().await;
        }
        return Err(HandshakeError::Plaintext);
    }
    let stream = TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(classify)?;
    let id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|keys| keys.first())
        .map(|key| BoxId::from_public_key(key.as_ref()))
        .ok_or(HandshakeError::NoKey)?;
    Ok((tokio_rustls::TlsStream::Server(stream), id))
}

/// 32 bytes of keying material for `context` exported from `link`'s TLS session: equal at
/// both ends, unrelated to any other session or context (RFC 8446 §7.5).
pub fn export(link: &TlsLink, context: &[u8]) -> Result<[u8; 32], rustls::Error> {
    let mut out = [0u8; 32];
    match link {
        tokio_rustls::TlsStream::Client(stream) => {
            stream
                .get_ref()
                .1
                .export_keying_material(&mut out, EXPORTER_LABEL, Some(context))?;
        }
        tokio_rustls::TlsStream::Server(stream) => {
            stream
                .get_ref()
                .1
                .export_keying_material(&mut out, EXPORTER_LABEL, Some(context))?;
        }
    }
    Ok(out)
}

/// A TLS failure as a handshake error: one that says the other side is not boxsync (or an
/// older one) when its bytes were not TLS at all.
fn classify(error: io::Error) -> HandshakeError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => HandshakeError::NotBoxsync,
        Some(rustls::Error::AlertReceived(
            AlertDescription::AccessDenied | AlertDescription::BadCertificate,
        )) => HandshakeError::KeyRefused,
        Some(other) => HandshakeError::Tls(other.to_string()),
        None if error.kind() == io::ErrorKind::UnexpectedEof => HandshakeError::NotBoxsync,
        None => HandshakeError::Io(error),
    }
}

fn tls_error(error: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Tls(error.to_string())
}

/// Both sides refuse TLS 1.2 (only 1.3 is configured; this is never reached).
fn no_tls12() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not spoken".into())
}

/// Whether `dss` is a valid TLS 1.3 signature of `message` by the raw public key `cert`
/// (RFC 7250: the "certificate" is the key's SubjectPublicKeyInfo): the proof that the
/// other side holds the key its ID is the hash of.
fn proves_key(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let key = SubjectPublicKeyInfoDer::from(cert.as_ref());
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &key, dss, algorithms)
}

/// The client's check of the server: its key must be the pinned box's. It remembers the key
/// it saw, so that a mismatch can name the box that answered instead.
#[derive(Debug)]
struct PinnedBox {
    /// The box that must answer.
    expected: BoxId,
    /// The ID of the key the server presented, once it has.
    seen: Mutex<Option<BoxId>>,
    /// Signature algorithms accepted.
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedBox {
    fn seen(&self) -> Option<BoxId> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServerCertVerifier for PinnedBox {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = BoxId::from_public_key(end_entity.as_ref());
        let matches = id == self.expected;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        proves_key(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The server's check of a client: any key, as long as the client proves it holds it.
/// Trust is decided after the handshake, so that an untrusted box can be told why.
#[derive(Debug)]
struct AnyBoxKey {
    /// Signature algorithms accepted.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyBoxKey {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        proves_key(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
