//! Sample content for `boxsync demo`: two folders with a little of everything the commands
//! can show (subfolders, a name with a space, a non-ASCII name, an empty file, a few MiB).

use std::fs;
use std::io;
use std::path::Path;

/// Fills `peer` (the box the demo shell talks to) and `local` with sample files.
pub fn populate(local: &Path, peer: &Path) -> io::Result<()> {
    let files: &[(&str, Vec<u8>)] = &[
        ("hello.txt", b"Hello from the peer box!\n".to_vec()),
        (
            "notes/todo.md",
            b"# To do\n- try `index longlist`\n- try `download tcp hello.txt`\n".to_vec(),
        ),
        ("notes/empty.txt", Vec::new()),
        ("music/song one.mp3", pseudo_random(300 * 1024, 1)),
        ("photos/café.jpg", pseudo_random(120 * 1024, 2)),
        ("data/big.bin", pseudo_random(4 * 1024 * 1024, 3)),
    ];
    for (name, content) in files {
        write(peer, name, content)?;
    }
    fs::create_dir_all(peer.join("empty folder"))?;
    write(local, "mine.txt", b"This file lives on the local box.\n")?;
    Ok(())
}

fn write(root: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let path = root.join(name);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, content)
}

/// Deterministic filler bytes (xorshift), so the demo's hashes are the same every run.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
