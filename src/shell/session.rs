//! A shell session: this box, its peers, the current peer, and the execution of commands
//! against them. Returns typed outcomes; rendering is [`super::render`]'s job.

use std::ops::ControlFlow;
use std::sync::Arc;

use thiserror::Error;

use super::command::{self, Command, Selection, SyncAction, TrashAction};
use super::help;
use super::jobs::{Fetched, JobProgress, JobStatus, Jobs, Waited};
use super::many::{self, FileReport, Summary};
use super::prompt;
use super::remote::{self, Pick, RemoteError};
use crate::history::HistoryRecord;
use crate::local::LocalBox;
use crate::peer::{Peer, PeerError, Streamed};
use crate::share::filter::IndexFilter;
use crate::share::{Entry, FileHash, RelPath};
use crate::sync::{SyncHandle, SyncStatus};
use crate::transfer::{Downloaded, Progress};
use crate::types::{BoxId, PeerAddress, Transport};

/// What a successful command produced.
#[derive(Debug)]
pub enum Outcome {
    /// Index entries.
    Entries(Vec<Entry>),
    /// One file's hashes.
    Hash(FileHash),
    /// Every file's hashes.
    Hashes(Vec<FileHash>),
    /// A completed download.
    Downloaded(Downloaded),
    /// A set of files downloaded (`get '*.txt'`, `get music/`): how it went; each file
    /// was reported as it ended.
    DownloadedMany(Summary),
    /// `ls`: entries, directly inside a folder or picked by a pattern.
    Listed {
        /// `ls -l`: with mode, size and modification time.
        long: bool,
        /// The current remote folder, which names are shown relative to.
        folder: Option<RelPath>,
        /// The entries, by name.
        entries: Vec<Entry>,
    },
    /// The current remote folder (`pwd`, or after `cd`).
    Folder {
        /// The folder (`None`: the root).
        folder: Option<RelPath>,
        /// Whether `cd` moved to it (it says nothing then, as sftp).
        moved: bool,
    },
    /// The request log.
    History(Vec<HistoryRecord>),
    /// The current peer, if any, as `ID@HOST:PORT`.
    Peer(Option<String>),
    /// The session's peers and the boxes this box trusts.
    Peers(Vec<PeerRow>),
    /// What the trash holds: files and bytes, and the days they are kept.
    TrashUsage {
        /// Versions kept.
        files: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// Versions in the trash.
    Trashed(Vec<crate::share::trash::Trashed>),
    /// A version put back from the trash.
    Restored(crate::share::trash::Trashed),
    /// Help text.
    Help(String),
    /// The state of auto-sync.
    Sync(SyncStatus),
    /// What the round `sync now` started did.
    SyncRound(SyncRound),
    /// The user wants to leave.
    Quit,
    /// The background jobs in flight.
    Jobs(Vec<JobStatus>),
    /// A background job started.
    Started(JobStatus),
    /// A background job cancelled.
    Killed(JobStatus),
    /// `wait` returned: how many jobs were in flight, and how those that ended meanwhile
    /// ended.
    Waited(Waited),
}

/// A command that answers with a listing, which [`Session::list`] hands on batch by batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingKind {
    /// `index ...`: entries.
    Entries(IndexFilter),
    /// `hash checkall`: every file's hashes.
    Hashes,
}

impl ListingKind {
    /// The listing `command` asks for, if it asks for one.
    pub fn of(command: &Command) -> Option<ListingKind> {
        match command {
            Command::Index(filter) => Some(ListingKind::Entries(filter.clone())),
            Command::HashCheckall => Some(ListingKind::Hashes),
            _ => None,
        }
    }
}

/// One batch of a listing, as it arrived.
#[derive(Debug)]
pub enum Batch {
    /// Index entries.
    Entries(Vec<Entry>),
    /// Files' hashes.
    Hashes(Vec<FileHash>),
}

impl Batch {
    /// How many items it holds.
    pub fn len(&self) -> usize {
        match self {
            Batch::Entries(items) => items.len(),
            Batch::Hashes(items) => items.len(),
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `at` items and returns the others.
    pub fn split_off(&mut self, at: usize) -> Batch {
        let at = at.min(self.len());
        match self {
            Batch::Entries(items) => Batch::Entries(items.split_off(at)),
            Batch::Hashes(items) => Batch::Hashes(items.split_off(at)),
        }
    }
}

/// Longest `sync now` waits for the round it started before it reports what it has.
pub const SYNC_NOW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What `sync now` saw of the round it started.
#[derive(Debug, Clone)]
pub struct SyncRound {
    /// Whether the round ended within [`SYNC_NOW_WAIT`] (else it goes on).
    pub finished: bool,
    /// Each peer and how its part of the round went.
    pub peers: Vec<PeerRound>,
}

/// One peer's part of the round `sync now` started.
#[derive(Debug, Clone)]
pub struct PeerRound {
    /// The peer, as `sync status` names it.
    pub peer: String,
    /// How it went.
    pub result: PeerRoundResult,
}

/// How one peer's part of a round went.
#[derive(Debug, Clone)]
pub enum PeerRoundResult {
    /// It went through and did this.
    Done(crate::sync::RoundCounts),
    /// It failed as a whole, for this reason.
    Failed(String),
    /// The round did not try it (unreachable lately and waiting out its back-off, it dials
    /// this box, or still busy with an earlier round), or has not finished with it yet.
    NotTried,
}

/// One line of `peers`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerRow {
    /// Whether commands go to it.
    pub current: bool,
    /// Its ID.
    pub id: BoxId,
    /// Its address, if this session dials it.
    pub addr: Option<String>,
    /// Its name, if a person gave it one (`boxsync trust ID --name NAME`).
    pub name: Option<String>,
    /// Whether it is trusted for good (kept in the trust file), for this run only, or no
    /// longer.
    pub trust: &'static str,
}

/// Why a command failed after it was parsed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The command needs a peer and none is set.
    #[error("no peer: start with --peer ID@HOST:PORT or type 'peer ID@HOST:PORT'")]
    NoPeer,
    /// The request to the peer failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// `sync now` while sync is paused.
    #[error(
        "auto-sync is paused, so no round ran: 'sync on' resumes it (and starts a round at once)"
    )]
    SyncPaused,
    /// A sync command without sync running.
    #[error(
        "auto-sync is not running: it runs in a box with a shell or `serve` (not in a -c run), unless started with --sync 0"
    )]
    NoSync,
    /// The local request log could not be read.
    #[error("cannot read the request log: {0}")]
    History(std::io::Error),
    /// The trust file could not be read.
    #[error(transparent)]
    Trust(crate::trust::TrustError),
    /// `kill` named a job that is not in flight.
    #[error("no job {0} in flight; 'jobs' lists them")]
    NoSuchJob(u32),
    /// Only downloads run in the background.
    #[error("only downloads run in the background")]
    NotAJob,
    /// The trash could not be read, or a version not be put back.
    #[error(transparent)]
    Trash(crate::share::ShareError),
    /// A remote name or folder that cannot be (outside the shared folder, too long).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A pattern that picked no file.
    #[error("no file on the peer matches '{0}'")]
    NoMatch(String),
    /// `cd`, `ls` or a folder download named no folder the peer has.
    #[error("no folder '{0}' on the peer")]
    NoFolder(String),
    /// `cd` named a file.
    #[error("'{0}' is a file on the peer, not a folder")]
    NotAFolder(String),
    /// `ls` named nothing the peer has.
    #[error("no file or folder '{0}' on the peer")]
    NoSuchName(String),
}

impl From<crate::share::PathError> for SessionError {
    fn from(e: crate::share::PathError) -> SessionError {
        SessionError::Remote(RemoteError::Path(e))
    }
}

/// Starts a round, waits for it (at most [`SYNC_NOW_WAIT`]) and says what it did with each
/// peer; refused while sync is paused.
async fn sync_now(sync: &SyncHandle) -> Result<SyncRound, SessionError> {
    if !sync.status().enabled {
        return Err(SessionError::SyncPaused);
    }
    let since = crate::time::Timestamp::now();
    let round = sync.next_round();
    sync.sync_now();
    let finished = tokio::time::timeout(SYNC_NOW_WAIT, round).await.is_ok();
    let peers = sync
        .status()
        .peers
        .into_iter()
        .map(|p| {
            let tried = p.last_attempt.is_some_and(|at| at >= since);
            let result = match (&p.failure, p.last_round) {
                _ if !tried => PeerRoundResult::NotTried,
                (Some(_), _) | (None, None) => PeerRoundResult::Failed(
                    p.errors
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "the round failed".to_string()),
                ),
                (None, Some(counts)) => PeerRoundResult::Done(counts),
            };
            PeerRound {
                peer: p.peer,
                result,
            }
        })
        .collect();
    Ok(SyncRound { finished, peers })
}

/// The state of one shell: this box, the known peers and which one commands go to.
pub struct Session {
    /// This box.
    local: Arc<LocalBox>,
    /// Every peer known to the session, in the order given.
    peers: Vec<Arc<Peer>>,
    /// Index into `peers` of the current peer.
    current: Option<usize>,
    /// Downloads running in the background.
    jobs: Jobs,
    /// The auto-sync engine, when it runs: for the `sync` commands and the prompt.
    sync: Option<SyncHandle>,
    /// The current remote folder of each peer that has one (`cd`), by index into `peers`;
    /// a peer not here is at its root.
    folders: std::collections::BTreeMap<usize, RelPath>,
}

impl Session {
    /// A session for `local` with `peers` (the first is current).
    pub fn new(local: Arc<LocalBox>, peers: &[PeerAddress]) -> Session {
        let peers: Vec<Arc<Peer>> = peers
            .iter()
            .map(|target| Arc::new(Peer::new(target, Arc::clone(&local))))
            .collect();
        Session::with_peers(local, peers)
    }

    /// A session for `local` with peer clients made already (the first is current).
    pub fn with_peers(local: Arc<LocalBox>, peers: Vec<Arc<Peer>>) -> Session {
        Session {
            current: if peers.is_empty() { None } else { Some(0) },
            local,
            peers,
            jobs: Jobs::new(),
            sync: None,
            folders: std::collections::BTreeMap::new(),
        }
    }

    /// The peers given at start (and added with `peer ADDR`).
    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }

    /// Attaches the running sync engine, for the `sync` commands and the prompt.
    pub fn set_sync(&mut self, sync: SyncHandle) {
        self.sync = Some(sync);
    }

    /// The running sync engine, if any.
    pub fn sync(&self) -> Option<&SyncHandle> {
        self.sync.as_ref()
    }

    /// The background jobs (downloads started with `&` or `bg`).
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// Every known peer as `ID@HOST:PORT`, in the order they became known.
    pub fn peer_addrs(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.target().to_string()).collect()
    }

    /// The rows of `peers`: the session's peers in order, then the other trusted boxes.
    /// `trash ...`: this box's own trash.
    async fn trash(&self, action: TrashAction) -> Result<Outcome, SessionError> {
        let share = &self.local.share;
        let root = share.root().to_path_buf();
        let read = move |under: Option<RelPath>| {
            tokio::task::spawn_blocking(move || crate::share::trash::list(&root, under.as_ref()))
        };
        let joined = |e: tokio::task::JoinError| {
            SessionError::Trash(crate::share::ShareError::io(
                "<trash>",
                std::io::Error::other(e),
            ))
        };
        Ok(match action {
            TrashAction::Usage => {
                let all = read(None)
                    .await
                    .map_err(joined)?
                    .map_err(SessionError::Trash)?;
                Outcome::TrashUsage {
                    files: all.len(),
                    bytes: all.iter().map(|item| item.size).sum(),
                }
            }
            TrashAction::List(under) => Outcome::Trashed(
                read(under)
                    .await
                    .map_err(joined)?
                    .map_err(SessionError::Trash)?,
            ),
            TrashAction::Restore { path, version } => Outcome::Restored(
                share
                    .restore_from_trash(&path, version)
                    .await
                    .map_err(SessionError::Trash)?,
            ),
        })
    }

    fn peer_rows(&self) -> Result<Vec<PeerRow>, SessionError> {
        let trusted = self.local.trust.list().map_err(SessionError::Trust)?;
        let kind = |id: &BoxId| match trusted.iter().find(|t| &t.id == id) {
            Some(t) if t.kept => "kept",
            Some(_) => "this run",
            None => "no longer",
        };
        let name = |id: &BoxId| {
            trusted
                .iter()
                .find(|t| &t.id == id)
                .and_then(|t| t.name.clone())
        };
        let mut rows: Vec<PeerRow> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| PeerRow {
                current: self.current == Some(i),
                id: peer.id().clone(),
                addr: Some(peer.addr().to_string()),
                name: name(peer.id()),
                trust: kind(peer.id()),
            })
            .collect();
        for t in &trusted {
            if !self.peers.iter().any(|p| p.id() == &t.id) {
                rows.push(PeerRow {
                    current: false,
                    id: t.id.clone(),
                    addr: None,
                    name: t.name.clone(),
                    trust: kind(&t.id),
                });
            }
        }
        Ok(rows)
    }

    /// The sync engine's label for the prompt, when it runs.
    pub fn sync_label(&self) -> Option<String> {
        self.sync.as_ref().map(prompt::sync_label)
    }

    /// Starts `command` (a download) as a background job against the current peer.
    /// `make_progress` gets the job's number and returns where its progress goes. Must be
    /// called within a tokio runtime.
    pub fn spawn_job(
        &mut self,
        command: Command,
        make_progress: impl FnOnce(&JobStatus) -> JobProgress,
    ) -> Result<JobStatus, SessionError> {
        let peer = self.peer()?;
        let (command, rooted) = command.split_rooted();
        let folder = self.remote_folder().filter(|_| !rooted).cloned();
        let share = Arc::clone(&self.local.share);
        let (line, work) = self.work_of(command, folder.as_ref())?;
        Ok(self
            .jobs
            .start(line, make_progress, move |mut progress| async move {
                let quiet = |_: &RelPath, _: &Result<Downloaded, PeerError>| {};
                run_work(work, &peer, &share, &mut *progress, &quiet).await
            }))
    }

    /// The download `command` asks for, with names resolved against `folder` and the box's
    /// rate cap as the default: the line that names it (for jobs) and the work to run.
    fn work_of(
        &self,
        command: Command,
        folder: Option<&RelPath>,
    ) -> Result<(String, Work), SessionError> {
        let default_rate = self.local.settings.max_udp_rate;
        Ok(match command {
            Command::Download {
                transport,
                name,
                max_rate,
            } => {
                let name = remote::join(folder, &name)?;
                let line = command::download_line(transport, &name, max_rate);
                (line, Work::One(transport, name, max_rate.or(default_rate)))
            }
            Command::DownloadMany {
                transport,
                selection,
                max_rate,
            } => {
                let line = command::download_many_line(transport, &selection, max_rate);
                let pick = pick_of(folder, &selection)?;
                (
                    line,
                    Work::Many(transport, selection, pick, max_rate.or(default_rate)),
                )
            }
            _ => return Err(SessionError::NotAJob),
        })
    }

    /// The current peer's current remote folder (`None`: its root).
    pub fn remote_folder(&self) -> Option<&RelPath> {
        self.current.and_then(|i| self.folders.get(&i))
    }

    /// This box.
    pub fn local(&self) -> &Arc<LocalBox> {
        &self.local
    }

    /// The current peer, if one is set.
    pub fn current_peer(&self) -> Option<&Arc<Peer>> {
        self.current.and_then(|i| self.peers.get(i))
    }

    fn peer(&self) -> Result<Arc<Peer>, SessionError> {
        self.current_peer().cloned().ok_or(SessionError::NoPeer)
    }

    /// Runs a listing command against the current peer, handing its batches to `each` as
    /// they arrive (bounded memory, however long the listing); `each` returning `Break`
    /// stops it ([`Streamed::Stopped`]). [`Session::execute`] collects the same listings
    /// whole.
    pub async fn list(
        &self,
        kind: &ListingKind,
        mut each: impl FnMut(Batch) -> ControlFlow<()>,
    ) -> Result<Streamed, SessionError> {
        let peer = self.peer()?;
        Ok(match kind {
            ListingKind::Entries(filter) => {
                peer.index_each(filter, |items| each(Batch::Entries(items)))
                    .await?
            }
            ListingKind::Hashes => {
                peer.hash_all_each(|items| each(Batch::Hashes(items)))
                    .await?
            }
        })
    }

    /// Runs one command, as [`Session::execute_with`] does, telling no one of the files
    /// of a set as they end.
    pub async fn execute(
        &mut self,
        command: Command,
        progress: Progress<'_>,
    ) -> Result<Outcome, SessionError> {
        self.execute_with(command, progress, &|_, _| {}).await
    }

    /// Runs one command. Downloads report progress through `progress`. A `Background`
    /// command starts a job whose progress goes nowhere (the interactive shell calls
    /// [`Session::spawn_job`] itself, to draw a bar).
    ///
    /// A download of several files (`get '*.txt'`, a folder) reports each file to `report`
    /// as it ends, and its bytes as a whole to `progress`.
    pub async fn execute_with(
        &mut self,
        command: Command,
        progress: Progress<'_>,
        report: FileReport<'_>,
    ) -> Result<Outcome, SessionError> {
        // A name typed from the top (`get /notes/a`) runs as if no `cd` had been made.
        let (command, rooted) = command.split_rooted();
        let folder = self.remote_folder().filter(|_| !rooted).cloned();
        Ok(match command {
            Command::Index(filter) => Outcome::Entries(self.peer()?.index(&filter).await?),
            Command::HashVerify(name) => Outcome::Hash(
                self.peer()?
                    .hash(&remote::join(folder.as_ref(), &name)?)
                    .await?,
            ),
            Command::HashCheckall => Outcome::Hashes(self.peer()?.hash_all().await?),
            command @ (Command::Download { .. } | Command::DownloadMany { .. }) => {
                let (_, work) = self.work_of(command, folder.as_ref())?;
                let peer = self.peer()?;
                match run_work(work, &peer, &self.local.share, progress, report).await? {
                    Fetched::File(d) => Outcome::Downloaded(d),
                    Fetched::Files(summary) => Outcome::DownloadedMany(summary),
                }
            }
            Command::Ls { long, target } => {
                let entries = self.ls(folder.as_ref(), target.as_ref()).await?;
                Outcome::Listed {
                    long,
                    folder,
                    entries,
                }
            }
            Command::Cd(arg) => {
                let peer = self.peer()?;
                let to = match arg {
                    None => None,
                    Some(arg) => remote::change_folder(folder.as_ref(), &arg)?,
                };
                if let Some(to) = &to {
                    check_folder(&peer, to).await?;
                }
                if let Some(i) = self.current {
                    match &to {
                        Some(to) => self.folders.insert(i, to.clone()),
                        None => self.folders.remove(&i),
                    };
                }
                Outcome::Folder {
                    folder: to,
                    moved: true,
                }
            }
            Command::Pwd => Outcome::Folder {
                folder,
                moved: false,
            },
            Command::History(query) => {
                let records = self
                    .local
                    .history
                    .records()
                    .map_err(SessionError::History)?;
                Outcome::History(query.select(records, |r| {
                    let direction = match r.direction {
                        crate::history::Direction::Made => "made",
                        crate::history::Direction::Served => "served",
                    };
                    format!("{direction} {} {} {}", r.peer, r.request, r.outcome)
                }))
            }
            Command::Peer(None) => {
                Outcome::Peer(self.current_peer().map(|p| p.target().to_string()))
            }
            Command::Peer(Some(target)) => {
                let index = match self.peers.iter().position(|p| p.target() == target) {
                    Some(index) => index,
                    None => {
                        self.peers
                            .push(Arc::new(Peer::new(&target, Arc::clone(&self.local))));
                        self.peers.len() - 1
                    }
                };
                self.current = Some(index);
                Outcome::Peer(Some(target.to_string()))
            }
            Command::Peers => Outcome::Peers(self.peer_rows()?),
            Command::Trash(action) => self.trash(action).await?,
            Command::Sync(action) => {
                let sync = self.sync.as_ref().ok_or(SessionError::NoSync)?;
                match action {
                    SyncAction::Status => {}
                    SyncAction::Now => return sync_now(sync).await.map(Outcome::SyncRound),
                    SyncAction::On => sync.set_enabled(true),
                    SyncAction::Off => sync.set_enabled(false),
                    SyncAction::AllowDeletes => sync.allow_deletions(),
                }
                Outcome::Sync(sync.status())
            }
            Command::Help(topic) => Outcome::Help(help::text(topic.as_deref())),
            Command::Quit => Outcome::Quit,
            Command::Jobs => Outcome::Jobs(self.jobs.list()),
            Command::Kill(id) => {
                Outcome::Killed(self.jobs.kill(id).ok_or(SessionError::NoSuchJob(id))?)
            }
            Command::Wait => Outcome::Waited(self.jobs.wait_all().await),
            Command::Background(inner) => {
                Outcome::Started(self.spawn_job(*inner, |_| Box::new(|_, _| {}))?)
            }
            // Taken off above (`split_rooted` leaves none).
            Command::Rooted(_) => return Err(SessionError::NotAJob),
        })
    }
}

impl Session {
    /// What `ls` shows from `folder`: the entries directly inside it, or inside the folder
    /// named, or the file named, or those a pattern picks.
    async fn ls(
        &self,
        folder: Option<&RelPath>,
        target: Option<&Selection>,
    ) -> Result<Vec<Entry>, SessionError> {
        let peer = self.peer()?;
        Ok(match target {
            None => entries(&peer, &Pick::children(folder)).await?,
            Some(Selection::Glob(pattern)) => {
                let pick = Pick::glob(folder, pattern)?;
                let mut picked = entries(&peer, &pick).await?;
                if picked.is_empty() {
                    // `a[1].txt` matches no file but may be one's name.
                    if let Some(literal) = pick.literal() {
                        picked = entries(&peer, &Pick::exactly(literal)).await?;
                    }
                }
                if picked.is_empty() {
                    return Err(SessionError::NoMatch(pattern.clone()));
                }
                picked
            }
            Some(Selection::Path(name)) => {
                let full = remote::join(folder, name)?;
                let inside = entries(&peer, &Pick::children(Some(&full))).await?;
                if !inside.is_empty() {
                    return Ok(inside);
                }
                let itself = entries(&peer, &Pick::exactly(&full)).await?;
                match itself.first() {
                    None => return Err(SessionError::NoSuchName(name.to_string())),
                    Some(entry) if entry.is_dir() => Vec::new(),
                    Some(_) => itself,
                }
            }
        })
    }
}

/// What a background download does, decided before it starts.
enum Work {
    /// One file (or a folder by that name), its transport and rate cap.
    One(Transport, RelPath, Option<u64>),
    /// A set of files: the transport, what was typed, what it picks, the rate cap.
    Many(Transport, Selection, Pick, Option<u64>),
}

/// Runs a download's work against `peer`, landing files in `share`.
async fn run_work(
    work: Work,
    peer: &Peer,
    share: &Arc<crate::share::Share>,
    progress: Progress<'_>,
    report: FileReport<'_>,
) -> Result<Fetched, SessionError> {
    match work {
        Work::One(transport, name, max_rate) => {
            fetch_one(peer, share, transport, &name, max_rate, progress, report).await
        }
        Work::Many(transport, selection, pick, max_rate) => {
            let fetched = fetch_many(
                peer, share, transport, &selection, &pick, max_rate, progress, report,
            );
            fetched.await.map(Fetched::Files)
        }
    }
}

/// The entries a selection typed in `folder` asks the peer for.
fn pick_of(folder: Option<&RelPath>, selection: &Selection) -> Result<Pick, SessionError> {
    Ok(match selection {
        Selection::Glob(pattern) => Pick::glob(folder, pattern)?,
        Selection::Path(name) => Pick::under(&remote::join(folder, name)?),
    })
}

/// The peer's entries that `pick` picks, by name.
async fn entries(peer: &Peer, pick: &Pick) -> Result<Vec<Entry>, SessionError> {
    let mut kept = Vec::new();
    peer.index_each(&pick.filter, |batch| {
        kept.extend(batch.into_iter().filter(|e| pick.matches(e)));
        ControlFlow::Continue(())
    })
    .await?;
    Ok(kept)
}

/// Refuses a `cd` to what is no folder on the peer.
async fn check_folder(peer: &Peer, folder: &RelPath) -> Result<(), SessionError> {
    let itself = entries(peer, &Pick::exactly(folder)).await?;
    match itself.first() {
        Some(entry) if entry.is_dir() => Ok(()),
        Some(_) => Err(SessionError::NotAFolder(folder.to_string())),
        None if !entries(peer, &Pick::children(Some(folder)))
            .await?
            .is_empty() =>
        {
            Ok(())
        }
        None => Err(SessionError::NoFolder(folder.to_string())),
    }
}

/// Whether a download's error is the peer saying the name is no file it serves (gone, or
/// a folder), so that it may be a folder to take whole.
fn not_a_file(error: &PeerError) -> bool {
    use crate::protocol::ErrorKind;
    use crate::transfer::TransferError;
    matches!(
        error,
        PeerError::Remote {
            kind: ErrorKind::NotFound | ErrorKind::Refused,
            ..
        } | PeerError::Transfer(TransferError::Remote {
            kind: ErrorKind::NotFound | ErrorKind::Refused,
            ..
        })
    )
}

/// Downloads `name`; when the peer has no file but a folder by that name, every file
/// under it instead (`get music` as `get music/`).
async fn fetch_one(
    peer: &Peer,
    share: &Arc<crate::share::Share>,
    transport: Transport,
    name: &RelPath,
    max_rate: Option<u64>,
    progress: Progress<'_>,
    report: FileReport<'_>,
) -> Result<Fetched, SessionError> {
    let result = match transport {
        Transport::Tcp => peer.download_tcp(name, &mut *progress).await,
        Transport::Udp => peer.download_udp(name, max_rate, &mut *progress).await,
    };
    match result {
        Ok(d) => Ok(Fetched::File(d)),
        Err(e) if not_a_file(&e) => {
            let picked = many::pick(peer, &Pick::under(name)).await?;
            if picked.is_empty() {
                return Err(e.into());
            }
            let summary =
                many::download(peer, share, picked, transport, max_rate, progress, report).await;
            Ok(Fetched::Files(summary))
        }
        Err(e) => Err(e.into()),
    }
}

/// Downloads what `pick` picks (`selection` as typed, for the error when it is nothing):
/// a pattern's files, or a folder's files and folders.
#[allow(clippy::too_many_arguments)]
async fn fetch_many(
    peer: &Peer,
    share: &Arc<crate::share::Share>,
    transport: Transport,
    selection: &Selection,
    pick: &Pick,
    max_rate: Option<u64>,
    progress: Progress<'_>,
    report: FileReport<'_>,
) -> Result<Summary, SessionError> {
    let mut picked = many::pick(peer, pick).await?;
    match selection {
        Selection::Glob(pattern) => {
            // A pattern picks files; a folder it matches is not taken whole.
            picked.folders.clear();
            if picked.files.is_empty() {
                // `a[1].txt` matches no file but may be one's name.
                if let Some(literal) = pick.literal() {
                    picked = many::pick(peer, &Pick::exactly(literal)).await?;
                    picked.folders.clear();
                }
            }
            if picked.files.is_empty() {
                return Err(SessionError::NoMatch(pattern.clone()));
            }
        }
        Selection::Path(name) if picked.is_empty() => {
            return Err(SessionError::NoFolder(name.to_string()));
        }
        Selection::Path(_) => {}
    }
    Ok(many::download(peer, share, picked, transport, max_rate, progress, report).await)
}
