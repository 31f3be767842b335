//! A file as a list of blocks, so that a transfer moves only the blocks the receiver
//! lacks and a resumed one keeps what it verified.
//!
//! A block is known by its BLAKE3 *chaining value*: the hash of its bytes as the subtree of
//! BLAKE3's own tree that they are in the whole file (`blake3::hazmat`, the construction
//! Bao and iroh use for verified streaming). So one pass over a file gives both its list and
//! its BLAKE3 (the list merges, up BLAKE3's tree, into the file's hash), and a receiver
//! that checks every block against the list, and the list against the BLAKE3 that names
//! the version, has checked the whole file: no second pass over the assembled file.
//!
//! A chaining value binds a block's bytes and its place in the file: a block is found
//! again at the same offset of a file whose size gives the same block size (the old
//! version, a renamed or copied file, an append or a truncation), not at another offset
//! (an insert near the start moves every block after it; see docs/benchmarks.md for why no
//! rolling match is made).
//!
//! Block sizes grow with the file, as in Syncthing: the smallest power of two from 128 KiB
//! to 16 MiB that keeps a file under 2,000 blocks.

use std::io::Read;

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

use super::ShareError;
use super::dirs::Dirs;
use super::folder::{self, Fingerprint};
use super::hash::{Digests, HashCache, to_hex};
use super::path::RelPath;
use crate::time::Timestamp;

/// The smallest block.
pub const MIN_BLOCK: u64 = 128 * 1024;

/// The largest block.
pub const MAX_BLOCK: u64 = 16 * 1024 * 1024;

/// Blocks a file is kept under while a larger block size remains.
const BLOCKS_PER_FILE: u64 = 2000;

/// Most blocks in a list on the wire (its hex must fit one control frame of 1 MiB): files
/// of more (over 190 GiB) are transferred whole.
pub const MAX_LISTED_BLOCKS: usize = 12_000;

/// The block size of a file of `size` bytes.
pub fn block_size(size: u64) -> u64 {
    let mut block = MIN_BLOCK;
    while block < MAX_BLOCK && size > block.saturating_mul(BLOCKS_PER_FILE) {
        block *= 2;
    }
    block
}

/// A block's hash: its chaining value in the file's BLAKE3 tree, or, for a file of one
/// block, the file's BLAKE3 itself.
pub type BlockHash = [u8; 32];

/// One file's blocks: its size, the block size and each block's hash, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    /// The file's size.
    pub size: u64,
    /// The block size ([`block_size`] of `size`).
    pub block_size: u64,
    /// Each block's hash, in order (none for an empty file).
    pub hashes: Vec<BlockHash>,
}

/// Why a list from a peer cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockListError {
    /// The list has the wrong number of blocks or block size for the size.
    #[error("a block list of {count} blocks of {block_size} bytes does not fit {size} bytes")]
    Shape {
        /// The announced size.
        size: u64,
        /// The announced block size.
        block_size: u64,
        /// The announced number of blocks.
        count: usize,
    },
    /// The hashes are not hex of whole blocks' hashes.
    #[error("a block list is not hex of 32-byte hashes")]
    Encoding,
    /// The list does not merge into the BLAKE3 that names the version.
    #[error("the block list does not match the file's blake3")]
    Root,
}

impl BlockList {
    /// How many blocks.
    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// Where block `index` starts and how long it is.
    pub fn range(&self, index: usize) -> (u64, u64) {
        let offset = index as u64 * self.block_size;
        (
            offset,
            self.block_size.min(self.size - offset.min(self.size)),
        )
    }

    /// Whether `bytes` are block `index` of this file.
    pub fn matches(&self, index: usize, bytes: &[u8]) -> bool {
        let (offset, len) = self.range(index);
        index < self.count()
            && bytes.len() as u64 == len
            && block_hash(self.count(), offset, bytes) == self.hashes[index]
    }

    /// The BLAKE3 of the whole file, merged from the blocks' hashes.
    pub fn root(&self) -> blake3::Hash {
        match self.hashes.as_slice() {
            [] => blake3::hash(b""),
            [only] => blake3::Hash::from_bytes(*only),
            many => {
                let left_len = hazmat::left_subtree_len(self.size);
                let split = (left_len / self.block_size) as usize;
                let left = merge(&many[..split], self.block_size, left_len);
                let right = merge(&many[split..], self.block_size, self.size - left_len);
                hazmat::merge_subtrees_root(&left, &right, Mode::Hash)
            }
        }
    }

    /// The list as a peer sent it: `size`, its block size and the hashes as one hex
    /// string, checked for shape and against `blake3` (hex), the file's BLAKE3.
    pub fn from_wire(
        size: u64,
        block_size: u64,
        hex: &str,
        blake3: &str,
    ) -> Result<BlockList, BlockListError> {
        let count = hex.len() / 64;
        let shape = BlockListError::Shape {
            size,
            block_size,
            count,
        };
        if block_size != self::block_size(size)
            || count != size.div_ceil(block_size) as usize
            || count > MAX_LISTED_BLOCKS
        {
            return Err(shape);
        }
        if !hex.len().is_multiple_of(64) {
            return Err(BlockListError::Encoding);
        }
        let mut hashes = Vec::with_capacity(count);
        for i in 0..count {
            let part = hex
                .get(i * 64..(i + 1) * 64)
                .ok_or(BlockListError::Encoding)?;
            let hash = blake3::Hash::from_hex(part).map_err(|_| BlockListError::Encoding)?;
            hashes.push(*hash.as_bytes());
        }
        let list = BlockList {
            size,
            block_size,
            hashes,
        };
        if list.root().to_hex().as_str() != blake3 {
            return Err(BlockListError::Root);
        }
        Ok(list)
    }

    /// The hashes as one hex string, for the wire.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(self.hashes.len() * 64);
        for hash in &self.hashes {
            out.push_str(&to_hex(hash));
        }
        out
    }
}

/// The chaining value of the subtree made of `hashes` (blocks of `block_size`, the last
/// possibly short), `len` bytes long, in BLAKE3's tree.
fn merge(hashes: &[BlockHash], block_size: u64, len: u64) -> ChainingValue {
    if hashes.len() == 1 {
        return hashes[0];
    }
    let left_len = hazmat::left_subtree_len(len);
    let split = (left_len / block_size) as usize;
    let left = merge(&hashes[..split], block_size, left_len);
    let right = merge(&hashes[split..], block_size, len - left_len);
    hazmat::merge_subtrees_non_root(&left, &right, Mode::Hash)
}

/// The hash of one block at `offset` of a file of `count` blocks.
fn block_hash(count: usize, offset: u64, bytes: &[u8]) -> BlockHash {
    let mut hasher = blake3::Hasher::new();
    if count == 1 {
        update(&mut hasher, bytes);
        return *hasher.finalize().as_bytes();
    }
    hasher.set_input_offset(offset);
    update(&mut hasher, bytes);
    hasher.finalize_non_root()
}

/// Feeds `bytes`, on all cores when they are many.
fn update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= 512 * 1024 {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// Computes a file's block list, and so its BLAKE3, from its bytes in order, fed in
/// pieces of any size.
pub struct BlockHasher {
    /// The file's size, as it was when hashing began.
    size: u64,
    /// Its block size.
    block_size: u64,
    /// The block being fed.
    current: Vec<u8>,
    /// The bytes fed so far.
    fed: u64,
    /// The hashes of the blocks done.
    hashes: Vec<BlockHash>,
}

impl BlockHasher {
    /// A hasher for a file of `size` bytes.
    pub fn new(size: u64) -> BlockHasher {
        let block_size = block_size(size);
        BlockHasher {
            size,
            block_size,
            current: Vec::new(),
            fed: 0,
            hashes: Vec::with_capacity(size.div_ceil(block_size) as usize),
        }
    }

    /// Feeds the next bytes. More than the size announced are a caller's mistake, caught
    /// by [`BlockHasher::finish`].
    pub fn update(&mut self, mut bytes: &[u8]) {
        let count = self.size.div_ceil(self.block_size) as usize;
        while !bytes.is_empty() {
            let room = (self.block_size as usize).saturating_sub(self.current.len());
            let take = room.min(bytes.len());
            self.current.extend_from_slice(&bytes[..take]);
            self.fed += take as u64;
            bytes = &bytes[take..];
            if self.current.len() as u64 == self.block_size {
                let offset = self.hashes.len() as u64 * self.block_size;
                self.hashes
                    .push(block_hash(count.max(1), offset, &self.current));
                self.current.clear();
            }
        }
    }

    /// The list, or `None` when the bytes fed were not the size announced (the file
    /// changed while it was read).
    pub fn finish(mut self) -> Option<BlockList> {
        if self.fed != self.size {
            return None;
        }
        let count = self.size.div_ceil(self.block_size) as usize;
        if !self.current.is_empty() {
            let offset = self.hashes.len() as u64 * self.block_size;
            self.hashes.push(block_hash(count, offset, &self.current));
        }
        Some(BlockList {
            size: self.size,
            block_size: self.block_size,
            hashes: self.hashes,
        })
    }
}

/// One version of a file as its block list describes it, for a peer that wants it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The version's fingerprint here.
    pub fingerprint: Fingerprint,
    /// Its last-modified time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
    /// Its BLAKE3, hex: what names it.
    pub blake3: String,
    /// Its blocks (`None`: more than [`MAX_LISTED_BLOCKS`], transferred whole).
    pub list: Option<BlockList>,
}

/// Bytes per read while a file is listed.
const READ: u64 = 1024 * 1024;

/// Lists the blocks of `rel`: from the database when they are stored for its current
/// fingerprint, else by reading it once (which gives its BLAKE3 too, remembered in
/// `cache`). A file that changes while it is read fails with [`ShareError::Changed`].
pub fn read_list(dirs: &mut Dirs, rel: &RelPath, cache: &HashCache) -> Result<Listed, ShareError> {
    let (mut file, meta) = dirs.open_regular(rel)?;
    let fingerprint = Fingerprint::of(&meta);
    let (mtime, mode) = (folder::modified(&meta), folder::mode(&meta));
    let size = meta.len();
    if let Some(list) = cache.blocks(rel, &fingerprint) {
        return Ok(Listed {
            fingerprint,
            mtime,
            mode,
            blake3: list.root().to_hex().to_string(),
            list: Some(list),
        });
    }
    if size.div_ceil(block_size(size)) as usize > MAX_LISTED_BLOCKS {
        let hash = cache.hash_file_in(dirs, rel, super::hash::DigestSet::Blake3)?;
        return Ok(Listed {
            fingerprint,
            mtime,
            mode,
            blake3: hash.blake3.to_string(),
            list: None,
        });
    }
    let root = dirs.root().to_path_buf();
    let mut hasher = BlockHasher::new(size);
    let mut buffer = Vec::with_capacity(READ as usize);
    loop {
        buffer.clear();
        (&mut file)
            .take(READ)
            .read_to_end(&mut buffer)
            .map_err(|e| ShareError::io(rel.under(&root), e))?;
        if buffer.is_empty() {
            break;
        }
        hasher.update(&buffer);
    }
    let after = file
        .metadata()
        .map_err(|e| ShareError::io(rel.under(&root), e))?;
    let list = hasher
        .finish()
        .filter(|_| Fingerprint::of(&after) == fingerprint)
        .ok_or_else(|| ShareError::Changed(rel.clone()))?;
    let blake3 = list.root().to_hex().to_string();
    cache.insert(
        rel,
        fingerprint,
        Digests {
            blake3: blake3.clone().into(),
            sha256: None,
            md5: None,
        },
    );
    cache.store_blocks(rel, &fingerprint, &list);
    Ok(Listed {
        fingerprint,
        mtime,
        mode,
        blake3,
        list: Some(list),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that differ from block to block.
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
            .collect()
    }

    fn list_of(data: &[u8], piece: usize) -> BlockList {
        let mut hasher = BlockHasher::new(data.len() as u64);
        for part in data.chunks(piece.max(1)) {
            hasher.update(part);
        }
        hasher.finish().expect("all fed")
    }

    /// The list merges into exactly BLAKE3 of the file, whatever the size (empty, one
    /// block, a short last block, a power of two of blocks and one more) and however the
    /// bytes are fed: the proof that the tree is walked as BLAKE3 walks it.
    #[test]
    fn a_list_merges_into_the_files_blake3() {
        let b = MIN_BLOCK as usize;
        for len in [
            0,
            1,
            1024,
            b - 1,
            b,
            b + 1,
            2 * b,
            2 * b + 1,
            3 * b + 7,
            4 * b,
            5 * b - 1,
            8 * b + 1024,
            13 * b + 5,
        ] {
            let data = bytes(len, 7);
            for piece in [1000, 65_536, b + 3] {
                let list = list_of(&data, piece);
                assert_eq!(list.root(), blake3::hash(&data), "len {len}, piece {piece}");
                assert_eq!(list.count(), (len as u64).div_ceil(MIN_BLOCK) as usize);
                for i in 0..list.count() {
                    let (offset, size) = list.range(i);
                    let block = &data[offset as usize..(offset + size) as usize];
                    assert!(list.matches(i, block), "len {len} block {i}");
                }
            }
        }
    }

    /// A block is known at its own place only: the same bytes at another offset, or
    /// changed by one byte, do not match.
    #[test]
    fn a_block_matches_only_its_bytes_at_its_place() {
        let b = MIN_BLOCK as usize;
        let mut data = bytes(4 * b, 1);
        data[b..2 * b].copy_from_slice(&bytes(b, 9));
        data[2 * b..3 * b].copy_from_slice(&bytes(b, 9));
        let list = list_of(&data, b);
        assert!(list.matches(1, &data[b..2 * b]));
        assert!(!list.matches(2, &data[b..2 * b]) || list.hashes[1] != list.hashes[2]);
        assert_ne!(list.hashes[1], list.hashes[2], "same bytes, other place");
        let mut changed = data[b..2 * b].to_vec();
        changed[100] ^= 1;
        assert!(!list.matches(1, &changed));
        assert!(!list.matches(1, &data[b..2 * b - 1]), "short");
        assert!(!list.matches(9, &data[b..2 * b]), "no such block");
    }

    /// Block sizes grow with the file: 128 KiB up to 250 MiB (2,000 blocks), then
    /// doubling, never beyond 16 MiB.
    #[test]
    fn block_sizes_keep_a_file_under_two_thousand_blocks() {
        assert_eq!(block_size(0), MIN_BLOCK);
        assert_eq!(block_size(2000 * MIN_BLOCK), MIN_BLOCK);
        assert_eq!(block_size(2000 * MIN_BLOCK + 1), 2 * MIN_BLOCK);
        assert_eq!(block_size(1 << 30), 1 << 20);
        assert_eq!(block_size(1 << 50), MAX_BLOCK);
    }

    /// A list from a peer is refused unless it has the shape its size gives and merges
    /// into the BLAKE3 that names the version.
    #[test]
    fn a_list_from_a_peer_is_checked() {
        let data = bytes(3 * MIN_BLOCK as usize + 5, 3);
        let list = list_of(&data, 4096);
        let blake3 = blake3::hash(&data).to_hex().to_string();
        let back = BlockList::from_wire(list.size, list.block_size, &list.hex(), &blake3);
        assert_eq!(back, Ok(list.clone()));
        let other = blake3::hash(b"other").to_hex().to_string();
        assert_eq!(
            BlockList::from_wire(list.size, list.block_size, &list.hex(), &other),
            Err(BlockListError::Root)
        );
        assert!(matches!(
            BlockList::from_wire(list.size + MIN_BLOCK, list.block_size, &list.hex(), &blake3),
            Err(BlockListError::Shape { .. })
        ));
        assert!(matches!(
            BlockList::from_wire(list.size, 2 * MIN_BLOCK, &list.hex(), &blake3),
            Err(BlockListError::Shape { .. })
        ));
        let mut bad = list.hex();
        bad.replace_range(0..1, "g");
        assert_eq!(
            BlockList::from_wire(list.size, list.block_size, &bad, &blake3),
            Err(BlockListError::Encoding)
        );
        let hasher = BlockHasher::new(10);
        assert_eq!(hasher.finish(), None, "fewer bytes than announced");
    }
}
