//! Background transfers (`download ... &`): a table of the jobs in flight with their
//! progress, cancellation by job number, and an event for each job that ends, so that the
//! interactive shell can announce it above the prompt.
//!
//! A job is a tokio task. Killing it aborts the task, which drops the download's future:
//! the transfer stops and its partial file is removed, as for Ctrl-C on a foreground one.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::many::Summary;
use super::session::SessionError;
#[cfg(test)]
use crate::peer::PeerError;
use crate::transfer::Downloaded;

/// Receives a background transfer's progress, `(bytes so far, total bytes)`; the
/// interactive shell draws a bar with it.
pub type JobProgress = Box<dyn FnMut(u64, u64) + Send>;

/// A job as `jobs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// Its number, counted from 1 in each session (`kill 1`).
    #[serde(rename = "job")]
    pub id: u32,
    /// The command that started it, as a line (`download udp big.iso`).
    pub command: String,
    /// Bytes received so far.
    pub done: u64,
    /// Bytes in all (0 until the peer has said).
    pub total: u64,
    /// Time since it started.
    pub seconds: f64,
}

/// What a job fetched: one file, or a set of them.
#[derive(Debug)]
pub enum Fetched {
    /// `download tcp a.iso`.
    File(Downloaded),
    /// `get '*.txt'`, `get music/`: how the set went (it may hold failures).
    Files(Summary),
}

/// A job that ended by itself (a killed job sends none).
#[derive(Debug)]
pub struct JobEvent {
    /// The job, as it was when it ended.
    pub status: JobStatus,
    /// What the download produced.
    pub result: Result<Fetched, SessionError>,
}

/// The background jobs of one session. Cheap to clone: clones share the table (the
/// completer reads job numbers from a clone).
#[derive(Clone)]
pub struct Jobs {
    /// The table and the channels, shared with every job's task.
    shared: Arc<Shared>,
}

/// State shared by the session and the jobs' tasks.
struct Shared {
    /// The jobs in flight. A std `Mutex`: never held across an `.await`.
    table: Mutex<Table>,
    /// Where ended jobs are reported.
    events: mpsc::UnboundedSender<JobEvent>,
    /// The receiving end, until the interactive shell takes it.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<JobEvent>>>,
    /// How many jobs are in flight; `wait` watches it fall to zero.
    running: watch::Sender<usize>,
    /// While `wait` runs, the jobs that ended during it, which `wait` reports instead of
    /// the line above the prompt. Locked before `table` when both are.
    waited: Mutex<Option<Vec<JobEvent>>>,
}

/// What `wait` saw.
#[derive(Debug)]
pub struct Waited {
    /// How many jobs were in flight when it started.
    pub count: usize,
    /// How each job that ended during the wait ended, in order.
    pub ended: Vec<JobEvent>,
}

/// The jobs in flight and the next job number.
#[derive(Default)]
struct Table {
    /// The number the next job gets.
    next_id: u32,
    /// Jobs in flight, by number.
    running: BTreeMap<u32, Running>,
}

/// One job in flight.
struct Running {
    /// The command that started it.
    command: String,
    /// Its progress, written by the transfer, read by `jobs`.
    counters: Arc<Counters>,
    /// When it started.
    started: Instant,
    /// Cancels it.
    abort: AbortHandle,
}

/// A transfer's progress, updated from the transfer's task without a lock.
#[derive(Default)]
struct Counters {
    /// Bytes so far.
    done: AtomicU64,
    /// Bytes in all.
    total: AtomicU64,
}

impl Running {
    fn status(&self, id: u32) -> JobStatus {
        JobStatus {
            id,
            command: self.command.clone(),
            done: self.counters.done.load(Ordering::Relaxed),
            total: self.counters.total.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs::new()
    }
}

impl Jobs {
    /// An empty table.
    pub fn new() -> Jobs {
        let (events, receiver) = mpsc::unbounded_channel();
        Jobs {
            shared: Arc::new(Shared {
                table: Mutex::new(Table {
                    next_id: 1,
                    running: BTreeMap::new(),
                }),
                events,
                receiver: Mutex::new(Some(receiver)),
                running: watch::Sender::new(0),
                waited: Mutex::new(None),
            }),
        }
    }

    /// The events of jobs that end; `None` once taken (one listener per session).
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<JobEvent>> {
        lock(&self.shared.receiver).take()
    }

    /// Starts `work` as job `command`. `make_progress` gets the new job's status (for its
    /// number) and returns where its progress goes; `work` gets the progress callback to
    /// pass to the transfer. Must be called within a tokio runtime.
    pub fn start<W, F>(
        &self,
        command: String,
        make_progress: impl FnOnce(&JobStatus) -> JobProgress,
        work: W,
    ) -> JobStatus
    where
        W: FnOnce(JobProgress) -> F,
        F: Future<Output = Result<Fetched, SessionError>> + Send + 'static,
    {
        let mut table = lock(&self.shared.table);
        let id = table.next_id;
        table.next_id += 1;
        let counters = Arc::new(Counters::default());
        let status = JobStatus {
            id,
            command: command.clone(),
            done: 0,
            total: 0,
            seconds: 0.0,
        };
        let mut sink = make_progress(&status);
        let progress: JobProgress = {
            let counters = Arc::clone(&counters);
            Box::new(move |done, total| {
                counters.done.store(done, Ordering::Relaxed);
                counters.total.store(total, Ordering::Relaxed);
                sink(done, total);
            })
        };
        let transfer = work(progress);
        let shared = Arc::clone(&self.shared);
        // The task cannot remove its entry before it is inserted: it needs the lock held
        // here to do so.
        let task = tokio::spawn(async move {
            let result = transfer.await;
            // Held while the job leaves the table, so that a `wait` woken by the count
            // falling to zero finds the event already there.
            let mut waited = lock(&shared.waited);
            if let Some(status) = shared.remove(id) {
                let event = JobEvent { status, result };
                match waited.as_mut() {
                    Some(ended) => ended.push(event),
                    None => {
                        let _ = shared.events.send(event);
                    }
                }
            }
        });
        table.running.insert(
            id,
            Running {
                command,
                counters,
                started: Instant::now(),
                abort: task.abort_handle(),
            },
        );
        self.shared.running.send_replace(table.running.len());
        status
    }

    /// The jobs in flight, by number.
    pub fn list(&self) -> Vec<JobStatus> {
        lock(&self.shared.table)
            .running
            .iter()
            .map(|(id, job)| job.status(*id))
            .collect()
    }

    /// The numbers of the jobs in flight.
    pub fn ids(&self) -> Vec<u32> {
        lock(&self.shared.table).running.keys().copied().collect()
    }

    /// How many jobs are in flight.
    pub fn count(&self) -> usize {
        lock(&self.shared.table).running.len()
    }

    /// Cancels job `id`; its status as it was, or `None` if no such job is in flight.
    pub fn kill(&self, id: u32) -> Option<JobStatus> {
        let status = self.shared.remove(id)?;
        Some(status)
    }

    /// Cancels every job; how many there were.
    pub fn kill_all(&self) -> usize {
        let ids = self.ids();
        ids.into_iter()
            .filter(|id| self.kill(*id).is_some())
            .count()
    }

    /// Waits until no job is in flight; returns how many were when it started and how
    /// each that ended meanwhile ended (those are not sent as events). Cancelled (dropped),
    /// it sends the events it collected, so that none goes unannounced.
    pub async fn wait_all(&self) -> Waited {
        let collecting = Collecting::start(&self.shared);
        let mut running = self.shared.running.subscribe();
        let count = *running.borrow_and_update();
        let _ = running.wait_for(|n| *n == 0).await;
        Waited {
            count,
            ended: collecting.finish(),
        }
    }
}

/// The jobs' outcomes going to a `wait` rather than to the events, for as long as it lives.
struct Collecting<'a> {
    /// Where the outcomes are kept.
    shared: &'a Shared,
}

impl<'a> Collecting<'a> {
    fn start(shared: &'a Shared) -> Collecting<'a> {
        lock(&shared.waited).get_or_insert_with(Vec::new);
        Collecting { shared }
    }

    /// The outcomes collected; later ones go to the events again.
    fn finish(self) -> Vec<JobEvent> {
        lock(&self.shared.waited).take().unwrap_or_default()
    }
}

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        for event in lock(&self.shared.waited).take().unwrap_or_default() {
            let _ = self.shared.events.send(event);
        }
    }
}

impl Shared {
    /// Takes job `id` out of the table and aborts its task (a no-op when the task itself
    /// is the caller, having finished); its last status, or `None` if it was not there.
    fn remove(&self, id: u32) -> Option<JobStatus> {
        let mut table = lock(&self.table);
        let job = table.running.remove(&id)?;
        job.abort.abort();
        self.running.send_replace(table.running.len());
        Some(job.status(id))
    }
}

/// Locks a mutex, going on with the data if a panicking thread poisoned it (the table stays
/// consistent: every change is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn never() -> impl Future<Output = Result<Fetched, SessionError>> + Send + 'static {
        std::future::pending()
    }

    /// Jobs and their events, with job `download tcp a` started, which fails once the
    /// returned sender sends (or drops).
    fn start_failing() -> (
        Jobs,
        mpsc::UnboundedReceiver<JobEvent>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let jobs = Jobs::new();
        let events = jobs.take_events().expect("events");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        jobs.start(
            "download tcp a".into(),
            |_| Box::new(|_, _| {}),
            |_| async move {
                let _ = released.await;
                Err(SessionError::Peer(PeerError::Unreachable {
                    addr: "127.0.0.1:9".into(),
                    reason: "connection refused".into(),
                }))
            },
        );
        (jobs, events, release)
    }

    /// Jobs get increasing numbers, show their progress, and a killed job is gone at once
    /// and sends no event.
    #[tokio::test]
    async fn start_list_kill() {
        let jobs = Jobs::new();
        let mut events = jobs.take_events().expect("events");
        assert!(jobs.take_events().is_none());
        let first = jobs.start(
            "download tcp a".into(),
            |_| Box::new(|_, _| {}),
            |mut p| {
                p(5, 10);
                never()
            },
        );
        let second = jobs.start(
            "download tcp b".into(),
            |_| Box::new(|_, _| {}),
            |_| never(),
        );
        assert_eq!((first.id, second.id), (1, 2));
        let listed = jobs.list();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].done, listed[0].total), (5, 10));
        assert_eq!(jobs.kill(1).map(|s| s.id), Some(1));
        assert!(jobs.kill(1).is_none());
        assert_eq!(jobs.ids(), vec![2]);
        assert_eq!(jobs.kill_all(), 1);
        assert_eq!(jobs.count(), 0);
        assert_eq!(jobs.wait_all().await.count, 0);
        assert!(events.try_recv().is_err());
    }

    /// A job that ends reports its result, and `wait` returns once every job has ended.
    #[tokio::test]
    async fn ended_jobs_report_and_wait_returns() {
        let (jobs, mut events, release) = start_failing();
        let waiting = tokio::spawn({
            let jobs = jobs.clone();
            async move { jobs.wait_all().await }
        });
        // Let the waiting task start while the job is still in flight (one thread: the
        // tasks run in order at the first yield).
        tokio::task::yield_now().await;
        let _ = release.send(());
        let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("wait returns")
            .expect("wait task");
        // The job ended during the wait: `wait` reports it, the events do not.
        assert_eq!(waited.count, 1);
        assert_eq!(waited.ended.len(), 1);
        let event = &waited.ended[0];
        assert_eq!(event.status.id, 1);
        assert!(event.result.is_err());
        assert!(events.try_recv().is_err());
    }

    /// A job that ends while no `wait` runs, or after a `wait` was cancelled, is sent as
    /// an event.
    #[tokio::test]
    async fn cancelled_wait_hands_back_events() {
        let (jobs, mut events, release) = start_failing();
        let cancelled = tokio::time::timeout(Duration::from_millis(1), jobs.wait_all()).await;
        assert!(cancelled.is_err(), "the job is still in flight");
        let _ = release.send(());
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event in time")
            .expect("an event");
        assert_eq!(event.status.id, 1);
    }
}
