//! Many files in one request (`download_many`), the receiving side: what sync uses for
//! small files, where one round trip, one temporary-file flush and one rename-and-flush
//! per file would cost far more than the bytes.
//!
//! The answers arrive in the order asked, each a whole TCP download (`file_start`, data,
//! `file_end`) or an `error`, then `batch_end`. One blocking thread per batch writes each
//! file to a staged file of its own (unnamed where possible: [`crate::share::staged`]),
//! hashing it as it goes, and keeps it only if its BLAKE3 equals the sender's. Installing
//! comes after, for the whole batch at once ([`crate::share::Share::install_batch`]). A
//! file that fails (refused by the peer, changed while sent, a digest mismatch) fails
//! alone; a broken connection ends the batch but keeps the files already verified.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::body::{Body, BodyEnd, Next, unexpected};
use super::tcp::start_write_back;
use super::{Landing, TransferError, receive_within};
use crate::protocol::{Connection, Response, message};
use crate::share::install::{set_meta, set_mtime};
use crate::share::{
    BatchInstall, Digests, InstallMeta, RelPath, Share, ShareError, StagedFile, Stager,
};
use crate::time::Timestamp;

/// Pieces in flight between the socket task and the writing thread (each at most one data
/// frame, so memory stays bounded whatever the files' sizes).
const PIPELINE_DEPTH: usize = 32;

/// Files at least this big start their write-back as soon as they are complete.
const WRITE_BACK_MIN: u64 = 64 * 1024;

/// A file of a batch that arrived complete and verified, staged under `.boxsync/tmp/` with
/// its final mode and mtime; gone if dropped before it is installed.
pub struct Received {
    /// The staged file.
    staged: StagedFile,
    /// Bytes.
    pub size: u64,
    /// Last-modified time, as on the peer.
    pub mtime: Timestamp,
    /// Permission bits, as on the peer.
    pub mode: u32,
    /// The sender's digests, which the received bytes matched (BLAKE3).
    pub digests: Digests,
}

impl Received {
    /// What [`Share::install_batch`] needs to put this file where `landing` says.
    pub fn into_install(self, landing: &Landing) -> BatchInstall {
        BatchInstall {
            staged: self.staged,
            rel: landing.name.clone(),
            digests: self.digests,
            expect: landing.expect.clone(),
        }
    }
}

/// What a batch brought.
pub struct BatchReceipt {
    /// One slot per file asked for, in order; `None` for files the exchange never reached.
    pub files: Vec<Option<Result<Received, TransferError>>>,
    /// What ended the exchange early, if something did; the connection is then unusable.
    pub broken: Option<TransferError>,
}

/// Receives the answers to a `download_many` request for `names`, already sent on
/// `connection`, into verified staged files of `share`.
///
/// Every frame must arrive within `stall` of the one before (the first, of the request):
/// else the batch ends there, broken by [`TransferError::Stalled`].
///
/// Dropping the future cancels the batch and removes every temporary file.
pub async fn receive_batch<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    share: &Arc<Share>,
    names: &[RelPath],
    stall: Duration,
) -> BatchReceipt {
    let mut files: Vec<Option<Result<Received, TransferError>>> =
        names.iter().map(|_| None).collect();
    let (pieces_tx, pieces_rx) = mpsc::channel::<Piece>(PIPELINE_DEPTH);
    let writer = {
        let share = Arc::clone(share);
        tokio::task::spawn_blocking(move || write_files(&share, pieces_rx))
    };
    let broken = exchange(connection, names, &pieces_tx, &mut files, stall)
        .await
        .err();
    drop(pieces_tx);
    match writer.await {
        Ok(written) => {
            for (index, result) in written {
                if let Some(slot) = files.get_mut(index) {
                    *slot = Some(result);
                }
            }
        }
        Err(e) => {
            // The writer died: whatever it wrote is lost, and its partial files with it.
            for slot in files.iter_mut().filter(|slot| slot.is_none()) {
                let failure = ShareError::io("<worker>", std::io::Error::other(e.to_string()));
                *slot = Some(Err(TransferError::Local(failure)));
            }
        }
    }
    BatchReceipt { files, broken }
}

/// The network side, once the request is sent: reads every answer, handing file bytes to the
/// writer and recording the peer's per-file refusals in `files`. `Err` means the
/// connection can no longer be trusted to be at a message boundary.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    names: &[RelPath],
    pieces: &mpsc::Sender<Piece>,
    files: &mut [Option<Result<Received, TransferError>>],
    stall: Duration,
) -> Result<(), TransferError> {
    for (index, (name, slot)) in names.iter().zip(files.iter_mut()).enumerate() {
        let start = receive_within(stall, connection.expect_message::<Response>()).await?;
        let (size, mtime, mode) = match start {
            Response::FileStart(message::FileStart {
                name: announced,
                size,
                mtime,
                mode,
            }) if &announced == name => (size, mtime, mode),
            Response::Error { kind, message } => {
                *slot = Some(Err(TransferError::Remote { kind, message }));
                continue;
            }
            other => return Err(unexpected(&other)),
        };
        let start = FileStart {
            index,
            name: name.clone(),
            meta: InstallMeta { mtime, mode },
        };
        // A file that fits in one data frame (most of a batch) goes to the writer in one
        // piece, not three: a third of the hand-offs and wake-ups.
        let mut held = Some((start, None));
        let mut body = Body::new(name, size, stall);
        let end = loop {
            match body.next(connection).await? {
                Next::Data(bytes) => match held.take() {
                    Some((start, None)) => held = Some((start, Some(bytes))),
                    Some((start, Some(first))) => {
                        send(pieces, Piece::Start(start)).await?;
                        send(pieces, Piece::Data(first)).await?;
                        send(pieces, Piece::Data(bytes)).await?;
                    }
                    None => send(pieces, Piece::Data(bytes)).await?,
                },
                Next::End(end) => break end,
            }
        };
        let failure = match end {
            BodyEnd::Complete(digests) => {
                let piece = match held {
                    Some((start, data)) => Piece::Whole {
                        start,
                        data,
                        digests,
                    },
                    None => Piece::End { digests },
                };
                send(pieces, piece).await?;
                continue;
            }
            BodyEnd::Short(got) => TransferError::Size {
                name: name.clone(),
                expected: size,
                got,
            },
            BodyEnd::Failed { kind, message } => TransferError::Remote { kind, message },
        };
        if held.is_none() {
            send(pieces, Piece::Abandon).await?;
        }
        *slot = Some(Err(failure));
    }
    match receive_within(stall, connection.expect_message::<Response>()).await? {
        Response::BatchEnd => Ok(()),
        other => Err(unexpected(&other)),
    }
}

async fn send(pieces: &mpsc::Sender<Piece>, piece: Piece) -> Result<(), TransferError> {
    pieces
        .send(piece)
        .await
        .map_err(|_| TransferError::Protocol("local writer stopped early".into()))
}

/// A file of the batch beginning.
struct FileStart {
    /// Its position in the request.
    index: usize,
    /// Its name on the peer.
    name: RelPath,
    /// Mode and mtime to give it.
    meta: InstallMeta,
}

/// What the socket task tells the writing thread.
enum Piece {
    /// A whole file, complete: its start, its bytes (none for an empty file), and the
    /// sender's digests to check them against.
    Whole {
        /// The file.
        start: FileStart,
        /// All its bytes.
        data: Option<Bytes>,
        /// The sender's digests of the bytes it sent.
        digests: Digests,
    },
    /// A file too big for one piece begins.
    Start(FileStart),
    /// The next bytes of the current file.
    Data(Bytes),
    /// The current file is complete; keep it if its BLAKE3 is `digests.blake3`.
    End {
        /// The sender's digests of the bytes it sent.
        digests: Digests,
    },
    /// The current file failed on the peer's side (already recorded): drop it.
    Abandon,
}

/// A file being written by the writing thread.
struct Writing {
    /// Its position in the request.
    index: usize,
    /// Its name on the peer.
    name: RelPath,
    /// The staged file, or why it could not be created or written.
    state: Result<StagedFile, ShareError>,
    /// BLAKE3 of the bytes so far.
    hasher: blake3::Hasher,
    /// Bytes written so far.
    written: u64,
    /// Mode and mtime to give it.
    meta: InstallMeta,
}

impl Writing {
    /// Stages a new file for `start`.
    fn start(start: FileStart, stager: &Stager, share: &Share) -> Writing {
        Writing {
            index: start.index,
            name: start.name,
            state: stager.create(start.meta.mode, || share.temp_path()),
            hasher: blake3::Hasher::new(),
            written: 0,
            meta: start.meta,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        if let Ok(staged) = &mut self.state
            && let Some(file) = staged.file()
            && let Err(e) = file.write_all(bytes)
        {
            self.state = Err(ShareError::io(staged.label(), e));
        }
    }

    /// Checks the bytes against the sender's digests and readies the file for installing.
    fn finish(self, digests: Digests) -> Result<Received, TransferError> {
        let mut staged = self.state?;
        let got = self.hasher.finalize().to_hex().to_string();
        if *got != *digests.blake3 {
            return Err(TransferError::Checksum {
                name: self.name,
                expected: digests.blake3.to_string(),
                got,
            });
        }
        let label = staged.label().to_path_buf();
        let has_mode = staged.has_mode(self.meta.mode);
        if let Some(file) = staged.file() {
            if has_mode {
                set_mtime(file, &label, self.meta)?;
            } else {
                set_meta(file, &label, self.meta)?;
            }
            if self.written >= WRITE_BACK_MIN {
                // Start writing it out now, so that the batch's single flush has little
                // left to do. (For a small file, a write of its own costs more than it
                // saves.)
                start_write_back(file, 0, self.written);
            }
        }
        staged.finish_writing();
        Ok(Received {
            staged,
            size: self.written,
            mtime: self.meta.mtime,
            mode: self.meta.mode,
            digests,
        })
    }
}

/// The writing thread: one partial file per announced file, results by index for the
/// files that ended (abandoned ones have their result recorded by the socket task).
fn write_files(
    share: &Share,
    mut pieces: mpsc::Receiver<Piece>,
) -> Vec<(usize, Result<Received, TransferError>)> {
    let stager: Stager = share.stager();
    let mut done = Vec::new();
    let mut current: Option<Writing> = None;
    while let Some(piece) = pieces.blocking_recv() {
        match piece {
            Piece::Whole {
                start,
                data,
                digests,
            } => {
                let mut writing = Writing::start(start, &stager, share);
                if let Some(bytes) = data {
                    writing.write(&bytes);
                }
                done.push((writing.index, writing.finish(digests)));
            }
            Piece::Start(start) => current = Some(Writing::start(start, &stager, share)),
            Piece::Data(bytes) => {
                if let Some(writing) = current.as_mut() {
                    writing.write(&bytes);
                }
            }
            Piece::End { digests } => {
                if let Some(writing) = current.take() {
                    done.push((writing.index, writing.finish(digests)));
                }
            }
            Piece::Abandon => current = None,
        }
    }
    done
}
