//! Several files fetched at once (`get '*.txt'`, `get music/`): the files a pick finds in
//! the peer's index, downloaded [`IN_FLIGHT`] at a time, each file's outcome handed on as it
//! ends, one failure never stopping the others. Ctrl-C or `kill` drops the future, which
//! stops the downloads in flight (their partial files removed) and starts no more.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;

use super::remote::Pick;
use crate::peer::{Peer, PeerError};
use crate::share::{RelPath, Share};
use crate::transfer::{Downloaded, Progress};
use crate::types::Transport;

/// How many files of a set download at once: enough to hide each file's round trips,
/// few enough that a 100,000-file glob holds four transfers, not 100,000.
pub const IN_FLIGHT: usize = 4;

/// Hears of each file of a set as it ends, well or not (the shell prints a line).
pub type FileReport<'a> = &'a (dyn Fn(&RelPath, &Result<Downloaded, PeerError>) + Send + Sync);

/// The files and folders a pick found on the peer.
#[derive(Debug, Default)]
pub struct Picked {
    /// Each file and its size in the index, by name.
    pub files: Vec<(RelPath, u64)>,
    /// The folders among the entries (made here too, so that empty ones exist).
    pub folders: Vec<RelPath>,
}

impl Picked {
    /// Whether the pick found nothing at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.folders.is_empty()
    }
}

/// What a several-file download did, for its summary line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Files fetched (all or part of their bytes came over the network).
    pub downloaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files this box already had as the peer has them: nothing fetched.
    pub up_to_date: usize,
    /// Folders made here (empty ones on the peer included).
    pub folders: usize,
    /// Each file that failed, with why.
    pub failed: Vec<(RelPath, String)>,
    /// Wall-clock time of the whole set.
    pub seconds: f64,
}

/// The progress of a set: what ended and what is in flight, and where it goes.
struct Bar<'a> {
    /// Bytes of the files that ended (their size in the index, however they ended).
    ended: u64,
    /// Bytes so far of each file in flight, by its place in the set.
    flying: BTreeMap<usize, u64>,
    /// The set's callback.
    progress: Progress<'a>,
}

/// The peer's entries that `pick` picks, in name order (held as names and sizes only).
pub async fn pick(peer: &Peer, pick: &Pick) -> Result<Picked, PeerError> {
    let mut picked = Picked::default();
    peer.index_each(&pick.filter, |batch| {
        for entry in batch.into_iter().filter(|e| pick.matches(e)) {
            if entry.is_dir() {
                picked.folders.push(entry.name);
            } else {
                picked.files.push((entry.name, entry.size));
            }
        }
        ControlFlow::Continue(())
    })
    .await?;
    Ok(picked)
}

/// Downloads `picked` into `share`, [`IN_FLIGHT`] files at a time: folders first (made
/// here, in one go), then each file; `progress` sees the bytes of the whole set, `report`
/// each file as it ends.
pub async fn download(
    peer: &Peer,
    share: &Arc<Share>,
    picked: Picked,
    transport: Transport,
    max_rate: Option<u64>,
    progress: Progress<'_>,
    report: FileReport<'_>,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    if !picked.folders.is_empty() {
        for (folder, made) in picked
            .folders
            .iter()
            .zip(share.create_dirs(picked.folders.clone()).await)
        {
            match made {
                Ok(()) => summary.folders += 1,
                Err(e) => summary.failed.push((folder.clone(), e.to_string())),
            }
        }
    }
    let total: u64 = picked.files.iter().map(|(_, size)| size).sum();
    // The bytes of the files ended and of each in flight, and the callback; a std `Mutex`,
    // never held across an `.await`.
    let bar = Mutex::new(Bar {
        ended: 0,
        flying: BTreeMap::new(),
        progress,
    });
    let tell = |change: &dyn Fn(&mut Bar)| {
        let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut bar);
        let done = bar.ended + bar.flying.values().sum::<u64>();
        (bar.progress)(done.min(total), total);
    };
    tell(&|_| {});
    let mut results = futures_util::stream::iter(picked.files.into_iter().enumerate())
        .map(|(i, (name, size))| {
            let tell = &tell;
            async move {
                let mut own = |done: u64, _total: u64| {
                    tell(&|bar| {
                        bar.flying.insert(i, done.min(size));
                    })
                };
                let result = match transport {
                    Transport::Tcp => peer.download_tcp(&name, &mut own).await,
                    Transport::Udp => peer.download_udp(&name, max_rate, &mut own).await,
                };
                tell(&|bar| {
                    bar.flying.remove(&i);
                    bar.ended += size;
                });
                (name, result)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((name, result)) = results.next().await {
        report(&name, &result);
        match result {
            Ok(d) if d.up_to_date => summary.up_to_date += 1,
            Ok(d) => {
                summary.downloaded += 1;
                summary.bytes += d.version.size;
            }
            Err(e) => summary.failed.push((name, e.to_string())),
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}
