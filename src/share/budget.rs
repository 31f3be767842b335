//! A bound on the memory that answers waiting for slow readers hold: a listing read afresh
//! (every entry of a folder, for one client) is charged here from before it is read until
//! its last batch is sent, so that many clients that ask and never read cannot make the box
//! hold one whole listing each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The budget of bytes held by answers not yet sent, shared by every client of one box.
///
/// The count sits behind a std `Mutex` held only to add or subtract, never across an
/// `.await`.
pub struct AnswerBudget {
    /// Bytes charged now.
    pending: Mutex<usize>,
    /// Most bytes that may be charged at once (one answer alone may exceed it).
    limit: AtomicUsize,
    /// The most bytes ever charged at once: what tests check against the limit.
    peak: AtomicUsize,
    /// The size of the last answer charged: the guess for the next one (0 until one is
    /// known: then the whole limit is guessed, so that a first listing is read alone).
    last: AtomicUsize,
    /// Woken whenever bytes are given back.
    freed: Notify,
}

/// Bytes charged to an [`AnswerBudget`], given back when dropped.
pub struct Charge<'a> {
    /// The budget.
    budget: &'a AnswerBudget,
    /// How many.
    bytes: usize,
}

impl Default for AnswerBudget {
    fn default() -> AnswerBudget {
        AnswerBudget {
            pending: Mutex::new(0),
            limit: AtomicUsize::new(crate::local::Limits::DEFAULT.answer_bytes),
            peak: AtomicUsize::new(0),
            last: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }
}

impl AnswerBudget {
    /// A budget with the default limit.
    pub fn new() -> AnswerBudget {
        AnswerBudget::default()
    }

    /// Sets the most bytes that may be charged at once.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes.max(1), Ordering::Relaxed);
    }

    /// The most bytes that may be charged at once.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged now.
    pub fn pending(&self) -> usize {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most bytes charged at once since the box started.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// What an answer of unknown size is charged first: the size of the last one, or the
    /// whole limit while none is known (so that answers of unknown size are read one at
    /// a time until one shows how big they are).
    pub fn guess(&self) -> usize {
        match self.last.load(Ordering::Relaxed) {
            0 => self.limit(),
            last => last,
        }
    }

    /// Charges `bytes` if they fit now (or if nothing else is charged: one answer bigger
    /// than the whole budget still goes, alone).
    pub fn try_charge(&self, bytes: usize) -> Option<Charge<'_>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if *pending != 0 && *pending + bytes > self.limit() {
            return None;
        }
        *pending += bytes;
        self.peak.fetch_max(*pending, Ordering::Relaxed);
        Some(Charge {
            budget: self,
            bytes,
        })
    }

    /// Charges `bytes`, waiting at most `wait` for other answers to give theirs back;
    /// `None` if they did not in time.
    pub async fn charge(&self, bytes: usize, wait: Duration) -> Option<Charge<'_>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(charge) = self.try_charge(bytes) {
                return Some(charge);
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
        }
    }
}

impl AnswerBudget {
    /// Gives back `bytes` of charges and wakes the requests waiting for room.
    fn give_back(&self, bytes: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = pending.saturating_sub(bytes);
        drop(pending);
        self.freed.notify_waiters();
    }
}

impl Charge<'_> {
    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes the charge `bytes`, the answer's real size once known, and remembers it as
    /// the guess for the next: gives back what was charged beyond it, or charges the
    /// rest if it fits now. Whether the charge now covers `bytes`.
    pub fn settle(&mut self, bytes: usize) -> bool {
        self.budget.last.store(bytes.max(1), Ordering::Relaxed);
        if bytes <= self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
            return true;
        }
        let more = bytes - self.bytes;
        let mut pending = self
            .budget
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *pending + more > self.budget.limit() && *pending != self.bytes {
            return false;
        }
        *pending += more;
        self.budget.peak.fetch_max(*pending, Ordering::Relaxed);
        self.bytes = bytes;
        true
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges beyond the limit wait until bytes are given back, and give up at their
    /// deadline; the peak never passes the limit.
    #[tokio::test]
    async fn charges_beyond_the_limit_wait_or_give_up() {
        let budget = AnswerBudget::new();
        budget.set_limit(100);
        let first = budget
            .try_charge(60)
            .expect("an empty budget takes a charge");
        assert!(
            budget.try_charge(60).is_none(),
            "the budget went past its limit"
        );
        let short = Duration::from_millis(20);
        assert!(budget.charge(60, short).await.is_none());
        drop(first);
        let second = budget.charge(60, Duration::from_secs(5)).await;
        assert!(
            second.is_some(),
            "a charge waited although bytes were given back"
        );
        assert!(budget.peak() <= 100);
        drop(second);
        assert_eq!(budget.pending(), 0);
        let alone = budget.try_charge(500);
        assert!(
            alone.is_some(),
            "one answer bigger than the budget is refused alone"
        );
    }

    /// A first answer of unknown size is charged the whole limit; settled at its size, it
    /// gives the rest back, and its size is the next guess.
    #[tokio::test]
    async fn a_charge_settles_at_the_real_size() {
        let budget = AnswerBudget::new();
        budget.set_limit(100);
        assert_eq!(budget.guess(), 100);
        let mut first = budget.try_charge(budget.guess()).unwrap();
        assert!(budget.try_charge(1).is_none());
        assert!(first.settle(30));
        assert_eq!((budget.pending(), budget.guess()), (30, 30));
        let mut second = budget.try_charge(budget.guess()).unwrap();
        assert!(!second.settle(80), "a charge grew past the limit");
        assert!(second.settle(70));
        assert_eq!(budget.pending(), 100);
        drop((first, second));
        assert_eq!(budget.pending(), 0);
    }
}
