//! Which chunks of a file have arrived: one bit per chunk, so a file of millions of chunks
//! costs an eighth of a byte per chunk, and runs of present or missing chunks are skipped a
//! word at a time when the receiver advances its cumulative point or lists what is missing.

/// A fixed-size set of chunk indices `0..len`.
#[derive(Debug, Clone)]
pub struct ChunkSet {
    /// Bit `i % 64` of word `i / 64` is set when chunk `i` is present.
    words: Vec<u64>,
    /// Number of chunks the set covers.
    len: u32,
}

impl ChunkSet {
    /// An empty set of `len` chunks. The caller bounds `len` (it allocates `len / 8` bytes).
    pub fn new(len: u32) -> ChunkSet {
        ChunkSet {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
        }
    }

    /// Adds `chunk`; returns whether it was new. A chunk out of range is never new.
    pub fn insert(&mut self, chunk: u32) -> bool {
        if chunk >= self.len {
            return false;
        }
        let (word, bit) = (chunk as usize / 64, 1u64 << (chunk % 64));
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }

    /// Whether `chunk` is present.
    pub fn contains(&self, chunk: u32) -> bool {
        chunk < self.len && self.words[chunk as usize / 64] & (1 << (chunk % 64)) != 0
    }

    /// The first chunk at or after `from` that is missing, or `len` if there is none.
    pub fn next_missing(&self, from: u32) -> u32 {
        self.next(from, true)
    }

    /// The first chunk at or after `from` that is present, or `len` if there is none.
    pub fn next_present(&self, from: u32) -> u32 {
        self.next(from, false)
    }

    /// The first chunk at or after `from` whose bit is clear (`missing`) or set.
    fn next(&self, from: u32, missing: bool) -> u32 {
        let mut index = from as usize / 64;
        let flip = if missing { u64::MAX } else { 0 };
        // Bits below `from` in its word do not count.
        let mut word = match self.words.get(index) {
            Some(&word) => (word ^ flip) & (u64::MAX << (from % 64)),
            None => return self.len,
        };
        loop {
            if word != 0 {
                let found = index as u64 * 64 + u64::from(word.trailing_zeros());
                return found.min(u64::from(self.len)) as u32;
            }
            index += 1;
            match self.words.get(index) {
                Some(&next) => word = next ^ flip,
                None => return self.len,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Searches agree with a plain vector of booleans on every start point, across word
    /// boundaries and at the set's ragged end.
    #[test]
    fn searches_match_a_vector_of_booleans() {
        for len in [0u32, 1, 63, 64, 65, 130, 200] {
            let mut set = ChunkSet::new(len);
            let mut plain = vec![false; len as usize];
            for chunk in (0..len).filter(|c| c % 7 == 0 || (64..128).contains(c) || c % 5 == 3) {
                assert!(set.insert(chunk));
                assert!(!set.insert(chunk), "inserted twice");
                plain[chunk as usize] = true;
            }
            assert!(!set.insert(len), "out of range");
            for from in 0..=len + 1 {
                let missing = (from..len).find(|&c| !plain[c as usize]).unwrap_or(len);
                let present = (from..len).find(|&c| plain[c as usize]).unwrap_or(len);
                assert_eq!(set.next_missing(from), missing, "len {len} from {from}");
                assert_eq!(set.next_present(from), present, "len {len} from {from}");
            }
            for chunk in 0..len {
                assert_eq!(set.contains(chunk), plain[chunk as usize]);
            }
        }
    }
}
