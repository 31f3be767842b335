//! A UDP socket that moves many datagrams per system call: generic segmentation offload
//! (one send of up to ~64 KiB that the kernel splits into datagrams) and batched receives
//! with generic receive offload, through the `quinn-udp` crate. Without this, a UDP
//! transfer on a fast path spends its time in one system call per 1,400-byte datagram.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::wire::MAX_DATAGRAM;

/// Largest total size of one segmented send (the kernel's limit is 64 KiB).
const MAX_SEND: usize = 64_000;

/// A tokio UDP socket with offloads.
pub struct FastSocket {
    /// The socket.
    socket: UdpSocket,
    /// Offload capabilities and settings, as detected by quinn-udp.
    state: UdpSocketState,
}

impl FastSocket {
    /// Wraps `socket`, detecting and enabling what the platform offers.
    pub fn new(socket: UdpSocket) -> io::Result<FastSocket> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(FastSocket { socket, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The underlying socket (for socket options).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// How many datagrams of `datagram_len` bytes one segmented send may carry.
    pub fn batch_capacity(&self, datagram_len: usize) -> usize {
        self.state
            .max_gso_segments()
            .min(MAX_SEND / datagram_len.max(1))
            .max(1)
    }

    /// Sends `contents` to `destination` as datagrams of `segment` bytes each (the last may
    /// be shorter), in as few system calls as the platform allows.
    pub async fn send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        loop {
            self.socket.writable().await?;
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Receives a batch of datagrams into `buffers`; returns how many buffer slots were
    /// filled (read them with [`ReceiveBuffers::datagrams`]). Cancel-safe.
    pub async fn recv(&self, buffers: &mut ReceiveBuffers) -> io::Result<usize> {
        loop {
            self.socket.readable().await?;
            let mut slices: Vec<IoSliceMut<'_>> = buffers
                .storage
                .iter_mut()
                .map(|b| IoSliceMut::new(b))
                .collect();
            let received = self.socket.try_io(Interest::READABLE, || {
                self.state
                    .recv((&self.socket).into(), &mut slices, &mut buffers.meta)
            });
            match received {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

/// Buffers for batched, coalesced receives.
pub struct ReceiveBuffers {
    /// One buffer per batch slot, each big enough for a coalesced run of datagrams.
    storage: Vec<Vec<u8>>,
    /// What each slot received.
    meta: Vec<RecvMeta>,
}

impl ReceiveBuffers {
    /// Buffers sized for `socket`'s receive offload.
    pub fn for_socket(socket: &FastSocket) -> ReceiveBuffers {
        let slot = socket.state.gro_segments().max(1) * (MAX_DATAGRAM + 64);
        ReceiveBuffers {
            storage: vec![vec![0u8; slot]; BATCH_SIZE],
            meta: vec![RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// The datagrams in the first `slots` slots, with their senders, writable (a sealed
    /// datagram is opened in place).
    pub fn datagrams_mut(&mut self, slots: usize) -> impl Iterator<Item = (&mut [u8], SocketAddr)> {
        self.storage
            .iter_mut()
            .zip(&self.meta)
            .take(slots)
            .flat_map(|(buffer, meta)| {
                let stride = meta.stride.max(1);
                let addr = meta.addr;
                buffer[..meta.len]
                    .chunks_mut(stride)
                    .map(move |datagram| (datagram, addr))
            })
    }

    /// The datagrams in the first `slots` slots, with their senders.
    pub fn datagrams(&self, slots: usize) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.storage
            .iter()
            .zip(&self.meta)
            .take(slots)
            .flat_map(|(buffer, meta)| {
                let stride = meta.stride.max(1);
                buffer[..meta.len]
                    .chunks(stride)
                    .map(move |datagram| (datagram, meta.addr))
            })
    }
}
