//! Downloads that move only what this box lacks: the receiving side of a download made
//! from the peer's block list ([`crate::share::blocks`]).
//!
//! 1. The peer's list of the version (its `blocks` answer), checked to merge into the
//!    BLAKE3 that names it.
//! 2. [`prepare`]: the version is assembled in a part kept to be resumed
//!    ([`super::resume`]): blocks it already holds from an earlier attempt are kept, a
//!    local file with the same content (moved or copied on the peer) gives all of them, and
//!    the local version being replaced gives those that did not change. Each is read and
//!    checked against the list before it counts. A local file that already is the version
//!    makes the download a no-op ("up to date").
//! 3. [`receive_ranges`]: the rest, fetched with one ranged `download`; each block is
//!    checked against the list as it arrives and written at its place (a block that does
//!    not match is refused, and nothing is installed).
//! 4. [`finish`]: with every block checked, the list proves the whole file (no second
//!    pass); it is flushed and installed atomically as any download.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::body::{Body, BodyEnd, Next, unexpected};
use super::partial::PartialFile;
use super::{Downloaded, Landing, Progress, TransferError, receive_within};
use crate::protocol::message::FileStart;
use crate::protocol::{Connection, Response};
use crate::share::blocks::BlockList;
use crate::share::dirs::Dirs;
use crate::share::folder::{self, Fingerprint};
use crate::share::resume::{ResumePart, ResumeStore};
use crate::share::{DigestSet, Digests, Expect, InstallMeta, RelPath, Share, ShareError};
use crate::time::Timestamp;
use crate::types::{FileVersion, Transport};

/// The blocks a ranged download asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRanges {
    /// The BLAKE3 of the version they are cut from (its `blocks` answer's): a file that
    /// has changed since is refused as changed.
    pub blake3: String,
    /// `[offset, length]` of each range, in increasing order, none overlapping.
    pub ranges: Vec<[u64; 2]>,
}

impl BlockRanges {
    /// Why these ranges cannot be served (out of order, overlapping, empty, too many),
    /// or `None`.
    pub fn fault(&self) -> Option<String> {
        if self.ranges.len() > crate::share::blocks::MAX_LISTED_BLOCKS {
            return Some(format!("{} ranges in one request", self.ranges.len()));
        }
        let mut end = 0u64;
        for [offset, len] in &self.ranges {
            let Some(next) = offset.checked_add(*len) else {
                return Some("a range ends beyond 2^64".into());
            };
            if *len == 0 || *offset < end {
                return Some("the ranges are empty, out of order or overlap".into());
            }
            end = next;
        }
        None
    }

    /// Bytes the ranges cover.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|[_, len]| len).sum()
    }
}

/// A peer's file as its block list describes it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The file.
    pub name: RelPath,
    /// Its last-modified time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
    /// Its BLAKE3, hex (64 digits, checked).
    pub blake3: String,
    /// Its blocks, proved to merge into `blake3` (`None`: too many to list; it is then
    /// downloaded whole).
    pub list: Option<BlockList>,
    /// Its size.
    pub size: u64,
}

impl RemoteFile {
    /// The version as installed here.
    fn version(&self) -> FileVersion {
        FileVersion {
            name: self.name.clone(),
            blake3: self.blake3.clone(),
            size: self.size,
            mtime: self.mtime,
            mode: self.mode,
        }
    }
}

/// Where the version is being assembled.
enum Part {
    /// A part kept to be resumed.
    Kept(ResumePart),
    /// A temporary file removed unless installed (another download holds the kept part).
    Once(PartialFile, File),
}

impl Part {
    fn file(&self) -> &File {
        match self {
            Part::Kept(part) => &part.file,
            Part::Once(_, file) => file,
        }
    }
}

/// A version being assembled: its part, and the blocks still to fetch.
pub struct Assembly {
    /// The version.
    remote: RemoteFile,
    /// Its blocks.
    list: BlockList,
    /// The part holding the blocks found so far.
    part: Part,
    /// The blocks still missing, in order.
    missing: Vec<usize>,
    /// Bytes found in this box's files (the old version, a file with the same content).
    reused: u64,
    /// Bytes kept from an earlier attempt.
    resumed: u64,
    /// When the download began.
    started: Instant,
}

impl Assembly {
    /// The ranges to fetch: runs of missing blocks.
    pub fn ranges(&self) -> BlockRanges {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for &index in &self.missing {
            let (offset, len) = self.list.range(index);
            match ranges.last_mut() {
                Some(last) if last[0] + last[1] == offset => last[1] += len,
                _ => ranges.push([offset, len]),
            }
        }
        BlockRanges {
            blake3: self.remote.blake3.clone(),
            ranges,
        }
    }

    /// Whether nothing is left to fetch.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The BLAKE3 of the version being assembled.
    pub fn remote_blake3(&self) -> &str {
        &self.remote.blake3
    }

    /// Where the blocks still missing go, for a transfer that fetches them (UDP's).
    pub fn sink(&self) -> Result<crate::transfer::udp::receiver::BlockSink, TransferError> {
        let file = self
            .part
            .file()
            .try_clone()
            .map_err(|e| ShareError::io("<part>", e))?;
        Ok(crate::transfer::udp::receiver::BlockSink {
            file,
            list: self.list.clone(),
            blocks: self.missing.clone(),
        })
    }

    /// Notes that these blocks were written and checked (by a transfer into [`Self::sink`]).
    pub fn written(&mut self, blocks: &[usize]) {
        self.missing.retain(|index| !blocks.contains(index));
    }

    /// Gives up this version for good (the peer no longer has it): its kept part is
    /// removed, since no later download can resume it.
    pub fn discard(self) {
        if let Part::Kept(kept) = self.part {
            let _ = std::fs::remove_file(&kept.path);
        }
    }
}

/// What [`prepare`] found.
pub enum Prepared {
    /// The local file already is this version: nothing to do.
    UpToDate(Box<Downloaded>),
    /// The version is being assembled.
    Assembling(Box<Assembly>),
    /// The file has too many blocks to list: download it whole.
    Whole,
}

/// Begins assembling `remote` for `landing` from what this box has (see the module
/// doc). Runs file work on a blocking thread.
pub async fn prepare(
    share: &Arc<Share>,
    landing: &Landing,
    remote: RemoteFile,
) -> Result<Prepared, TransferError> {
    let Some(list) = remote.list.clone() else {
        return Ok(Prepared::Whole);
    };
    let held = crate::share::resume::ResumeStore::new(&share.tmp_dir()).held(&remote.blake3);
    super::check_room(share, &landing.name, remote.size, held)?;
    let share = Arc::clone(share);
    let landing = landing.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || assemble_locally(&share, &landing, remote, list, started))
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", std::io::Error::other(e)).into()))
}

/// [`prepare`]'s blocking work.
fn assemble_locally(
    share: &Share,
    landing: &Landing,
    remote: RemoteFile,
    list: BlockList,
    started: Instant,
) -> Result<Prepared, TransferError> {
    let mut dirs = Dirs::open(share.root())?;
    let here = match dirs.open_regular(&landing.name) {
        Ok(opened) => Some(opened),
        Err(ShareError::NotFound(_) | ShareError::IsDirectory(_) | ShareError::NotAFile(_)) => None,
        Err(ShareError::Symlink(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some((_, meta)) = &here
        && up_to_date(share, &landing.name, meta, &remote, &landing.expect)
    {
        return Ok(Prepared::UpToDate(Box::new(Downloaded {
            version: remote.version(),
            sha256: None,
            md5: None,
            transport: Transport::Tcp,
            path: landing.name.under(share.root()),
            seconds: started.elapsed().as_secs_f64(),
            replaced: None,
            resent: None,
            note: None,
            transferred: 0,
            reused: remote.size,
            up_to_date: true,
        })));
    }
    let store = ResumeStore::new(&share.tmp_dir());
    store.sweep(SystemTime::now(), super::free_space(share).unwrap_or(0));
    let part = match store.open(&remote.blake3, remote.size)? {
        Some(part) => Part::Kept(part),
        None => {
            let (partial, file) = PartialFile::create(share.temp_path())?;
            file.set_len(remote.size)
                .map_err(|e| ShareError::io(partial.path(), e))?;
            Part::Once(partial, file)
        }
    };
    let mut have = vec![false; list.count()];
    let mut resumed = 0;
    if let Part::Kept(kept) = &part
        && kept.earlier
    {
        resumed = keep_matching(&kept.file, &kept.file, &list, &mut have, false)?;
    }
    let mut reused = 0;
    if have.iter().any(|h| !h) {
        for (source, fingerprint) in share.hash_cache().with_content(&remote.blake3, remote.size) {
            let Ok((file, meta)) = dirs.open_regular(&source) else {
                continue;
            };
            if Fingerprint::of(&meta) == fingerprint {
                reused += keep_matching(&file, part.file(), &list, &mut have, true)?;
                break;
            }
        }
    }
    if let Some((file, meta)) = &here
        && have.iter().any(|h| !h)
        && crate::share::blocks::block_size(meta.len()) == list.block_size
    {
        reused += keep_matching(file, part.file(), &list, &mut have, true)?;
    }
    let missing: Vec<usize> = (0..list.count()).filter(|&i| !have[i]).collect();
    Ok(Prepared::Assembling(Box::new(Assembly {
        remote,
        list,
        part,
        missing,
        reused,
        resumed,
        started,
    })))
}

/// Whether the local file `meta` of `name` already is `remote`: the same content (by its
/// cached BLAKE3, or hashed now when the sizes agree) and, unless a person asked for the
/// download (`Expect::Anything`), the same mtime and mode.
fn up_to_date(
    share: &Share,
    name: &RelPath,
    meta: &std::fs::Metadata,
    remote: &RemoteFile,
    expect: &Expect,
) -> bool {
    if meta.len() != remote.size {
        return false;
    }
    let same_metadata = folder::modified(meta) == remote.mtime && folder::mode(meta) == remote.mode;
    if *expect != Expect::Anything && !same_metadata {
        return false;
    }
    let cache = share.hash_cache();
    let blake3 = match cache.lookup(name, &Fingerprint::of(meta), DigestSet::Blake3) {
        Some(digests) => digests.blake3,
        None => match cache.hash_file(share.root(), name, DigestSet::Blake3) {
            Ok(hash) => hash.blake3,
            Err(_) => return false,
        },
    };
    *blake3 == *remote.blake3
}

/// Reads each block not yet in `have` from `source` at its place, and, where it matches
/// the list, marks it (writing it into `part` when `copy`). Returns the bytes found.
fn keep_matching(
    source: &File,
    part: &File,
    list: &BlockList,
    have: &mut [bool],
    copy: bool,
) -> Result<u64, TransferError> {
    let mut found = 0;
    let mut buffer = Vec::new();
    for (index, done) in have.iter_mut().enumerate() {
        if *done {
            continue;
        }
        let (offset, len) = list.range(index);
        buffer.resize(len as usize, 0);
        if source.read_exact_at(&mut buffer, offset).is_err() {
            break; // Shorter than this block: no later block is there either.
        }
        if !list.matches(index, &buffer) {
            continue;
        }
        if copy {
            part.write_all_at(&buffer, offset)
                .map_err(|e| ShareError::io("<part>", e))?;
        }
        *done = true;
        found += len;
    }
    Ok(found)
}

/// Receives the answer to a ranged download of `assembly`'s missing blocks (its request
/// sent), checking each block against the list as it arrives and writing it at its place.
/// Every frame must arrive within `stall` of the one before. Returns the sender's digests
/// of the whole version.
pub async fn receive_ranges<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    assembly: &mut Assembly,
    progress: Progress<'_>,
    stall: std::time::Duration,
) -> Result<Digests, TransferError> {
    let name = assembly.remote.name.clone();
    let total = assembly.ranges().total();
    let start = receive_within(stall, connection.expect_message::<Response>()).await?;
    match start {
        Response::FileStart(FileStart { name: got, .. }) if got != name => {
            return Err(TransferError::Protocol(format!(
                "an answer for '{got}' to a download of '{name}'"
            )));
        }
        Response::FileStart(FileStart { size, .. }) if size == total => {}
        Response::FileStart(FileStart { size, .. }) => {
            return Err(TransferError::Size {
                name,
                expected: total,
                got: size,
            });
        }
        Response::Error { kind, message } => return Err(TransferError::Remote { kind, message }),
        other => return Err(unexpected(&other)),
    }
    let known = assembly.reused + assembly.resumed;
    progress(known, assembly.remote.size);
    let (blocks_tx, blocks_rx) = mpsc::channel::<(usize, Vec<u8>)>(4);
    let writer = {
        let file = assembly
            .part
            .file()
            .try_clone()
            .map_err(|e| ShareError::io("<part>", e))?;
        let list = assembly.list.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || write_blocks(&file, &list, &name, blocks_rx))
    };
    let list = &assembly.list;
    let mut pending = assembly.missing.iter().copied();
    let received = async {
        let mut body = Body::new(&name, total, stall);
        let mut current: Option<(usize, Vec<u8>)> = None;
        loop {
            let bytes: Bytes = match body.next(connection).await? {
                Next::Data(bytes) => bytes,
                Next::End(end) => return Ok(Some(end)),
            };
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (index, block) = match current.as_mut() {
                    Some(open) => open,
                    None => {
                        let Some(index) = pending.next() else {
                            return Err(TransferError::Protocol("more bytes than blocks".into()));
                        };
                        let len = list.range(index).1 as usize;
                        current.insert((index, Vec::with_capacity(len)))
                    }
                };
                let len = list.range(*index).1 as usize;
                let take = (len - block.len()).min(rest.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if block.len() == len
                    && let Some(done) = current.take()
                    && blocks_tx.send(done).await.is_err()
                {
                    break;
                }
            }
            if blocks_tx.is_closed() {
                return Ok(None); // The writer stopped: its own error says why.
            }
            progress(known + body.received(), assembly.remote.size);
        }
    }
    .await;
    drop(blocks_tx);
    // Whatever happened, the blocks written are there (for a retry, or a later resume).
    let (written, wrote) = writer.await.unwrap_or_else(|e| {
        let failed = ShareError::io("<worker>", std::io::Error::other(e));
        (Vec::new(), Err(failed.into()))
    });
    assembly.missing.retain(|index| !written.contains(index));
    wrote?;
    let digests = match received? {
        Some(BodyEnd::Complete(digests)) => digests,
        Some(BodyEnd::Short(got)) => {
            return Err(TransferError::Size {
                name,
                expected: total,
                got,
            });
        }
        Some(BodyEnd::Failed { kind, message }) => {
            return Err(TransferError::Remote { kind, message });
        }
        None => return Err(TransferError::Protocol("local writer stopped early".into())),
    };
    if !assembly.missing.is_empty() {
        return Err(TransferError::Protocol("blocks are missing".into()));
    }
    if *digests.blake3 != *assembly.remote.blake3 {
        return Err(TransferError::Checksum {
            name,
            expected: assembly.remote.blake3.clone(),
            got: digests.blake3.to_string(),
        });
    }
    Ok(digests)
}

/// Checks each arriving block against the list and writes it at its place; the first
/// that does not match ends the download (it is never written). Returns the blocks
/// written, and how the writing ended.
fn write_blocks(
    file: &File,
    list: &BlockList,
    name: &RelPath,
    mut blocks: mpsc::Receiver<(usize, Vec<u8>)>,
) -> (Vec<usize>, Result<(), TransferError>) {
    let mut written = Vec::new();
    while let Some((index, bytes)) = blocks.blocking_recv() {
        if !list.matches(index, &bytes) {
            let mismatch = TransferError::Checksum {
                name: name.clone(),
                expected: format!("block {index} of the list"),
                got: "other bytes".into(),
            };
            return (written, Err(mismatch));
        }
        let (offset, _) = list.range(index);
        if let Err(e) = file.write_all_at(&bytes, offset) {
            return (written, Err(ShareError::io("<part>", e).into()));
        }
        written.push(index);
    }
    (written, Ok(()))
}

/// Installs a complete assembly as `landing` says: flushed, then renamed into place
/// atomically (the replaced version to the trash), its list stored for the new file.
/// `sent` are the sender's digests, when some blocks came over the network (SHA-256 and
/// MD5 come only with them).
pub async fn finish(
    share: &Arc<Share>,
    landing: &Landing,
    assembly: Assembly,
    sent: Option<Digests>,
) -> Result<Downloaded, TransferError> {
    if !assembly.complete() {
        return Err(TransferError::Protocol("blocks are missing".into()));
    }
    let Assembly {
        remote,
        list,
        part,
        reused,
        resumed,
        started,
        ..
    } = assembly;
    // A kept part stays locked (by its open file) until it is renamed into place.
    let (path, lock) = match part {
        Part::Kept(kept) => (kept.path, Some(kept.file)),
        Part::Once(partial, file) => {
            flush(&file, partial.path()).await?;
            (partial.keep(), None)
        }
    };
    if let Some(file) = &lock {
        flush(file, &path).await?;
    }
    let installed = install(share, landing, &remote, &list, sent, path).await;
    drop(lock);
    let (replaced, digests) = installed?;
    Ok(Downloaded {
        version: remote.version(),
        sha256: digests.sha256.map(|d| d.to_string()),
        md5: digests.md5.map(|d| d.to_string()),
        transport: Transport::Tcp,
        path: landing.name.under(share.root()),
        seconds: started.elapsed().as_secs_f64(),
        replaced,
        resent: None,
        note: None,
        transferred: remote.size - reused - resumed,
        reused: reused + resumed,
        up_to_date: false,
    })
}

/// Flushes the part's bytes to disk, off the async threads.
async fn flush(file: &File, path: &std::path::Path) -> Result<(), TransferError> {
    let file = file.try_clone().map_err(|e| ShareError::io(path, e))?;
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| ShareError::io(path, e).into())
}

/// Renames the flushed part at `path` into place as `landing` says.
async fn install(
    share: &Arc<Share>,
    landing: &Landing,
    remote: &RemoteFile,
    list: &BlockList,
    sent: Option<Digests>,
    path: std::path::PathBuf,
) -> Result<(Option<std::path::PathBuf>, Digests), TransferError> {
    let digests = match sent {
        Some(digests) => digests,
        // Nothing came from the peer: a person's download still shows MD5 and SHA-256,
        // of the bytes every block of which was just checked.
        None if landing.digests == DigestSet::All => {
            let part = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut hasher = crate::share::ContentHasher::new(DigestSet::All);
                let mut file = File::open(&part).map_err(|e| ShareError::io(&part, e))?;
                let mut buffer = vec![0u8; 1 << 20];
                loop {
                    use std::io::Read;
                    let n = file
                        .read(&mut buffer)
                        .map_err(|e| ShareError::io(&part, e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                }
                Ok::<_, ShareError>(hasher.finish())
            })
            .await
            .unwrap_or_else(|e| Err(ShareError::io("<worker>", std::io::Error::other(e))))?
        }
        None => Digests {
            blake3: remote.blake3.clone().into(),
            sha256: None,
            md5: None,
        },
    };
    let replaced = share
        .install_listed(
            path,
            &landing.name,
            InstallMeta {
                mtime: remote.mtime,
                mode: remote.mode,
            },
            digests.clone(),
            Some(list),
            &landing.expect,
        )
        .await?;
    Ok((replaced, digests))
}
