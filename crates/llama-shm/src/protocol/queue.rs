//! The admission queue of a shared worker: clients that find every slot busy take a ticket
//! and try the slots only when their ticket's turn comes, so slots go to waiting clients in
//! the order they came; a bounded number may wait, one more is told the worker is busy.
//!
//! ```text
//!  join:   tail - head < max ?  CAS tail → tail + 1 (ticket t), entry[t % CAP] := t << 32 | pid
//!  wait:   head == t ?  try the slots        (took one: leave)
//!          else the head's entry free, not its ticket's, or its pid dead ?  CAS head → head + 1
//!  leave:  entry[t % CAP] := 0 if still ours;  head == t ?  CAS head → t + 1
//! ```
//! Everything is in shared memory any client can write, so nothing here trusts it: a
//! ticket whose turn has passed (head beyond it) goes ahead at once, a queue that says it
//! holds more than it can is emptied (everyone goes ahead), and a dead or vanished waiter is
//! skipped by whoever waits behind it. A scribbler can spoil the order or make clients busy,
//! never make one wait past its deadline (the caller's loop has one).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::wire::layout::QUEUE_CAPACITY;

/// The shared words of a queue (in production, slot 0's extension page).
pub trait QueueWords {
    /// Most clients that may wait (`queue_max`, as the worker set it; clamped to the capacity).
    fn max(&self) -> u32;
    /// Tickets handed out so far (wrapping).
    fn tail(&self) -> &AtomicU32;
    /// The ticket whose holder may take the next free slot (wrapping).
    fn head(&self) -> &AtomicU32;
    /// Entry `i` (below [`QUEUE_CAPACITY`]): `ticket << 32 | pid`, 0 when free.
    fn entry(&self, i: usize) -> &AtomicU64;
}

/// Every slot is busy and the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// Clients waiting.
    pub waiting: u32,
    /// Most that may wait.
    pub max: u32,
}

/// A waiting client's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u32);

impl Ticket {
    fn entry(self) -> usize {
        self.0 as usize % QUEUE_CAPACITY
    }
    fn tagged(self, pid: u32) -> u64 {
        u64::from(self.0) << 32 | u64::from(pid)
    }
}

/// A queue over its shared words.
#[derive(Debug, Clone, Copy)]
pub struct Queue<W>(pub W);

impl<W: QueueWords> Queue<W> {
    /// Clients waiting now: tickets between head and tail whose holder has not left (0 when
    /// the words are impossible: the next join heals them).
    pub fn waiting(&self) -> u32 {
        let head = self.0.head().load(Ordering::Acquire);
        let span = self.0.tail().load(Ordering::Acquire).wrapping_sub(head);
        self.live(head, span, None)
    }

    /// Tickets `head..head + span` whose entry is still theirs (and, given `alive`, whose
    /// holder is).
    fn live(&self, head: u32, span: u32, alive: Option<&dyn Fn(u32) -> bool>) -> u32 {
        if span as usize > QUEUE_CAPACITY {
            return 0;
        }
        (0..span)
            .filter(|&i| {
                let t = Ticket(head.wrapping_add(i));
                let e = self.0.entry(t.entry()).load(Ordering::Acquire);
                (e >> 32) as u32 == t.0 && alive.is_none_or(|alive| alive(e as u32))
            })
            .count() as u32
    }

    /// The ticket at the head now.
    pub fn head(&self) -> u32 {
        self.0.head().load(Ordering::Acquire)
    }

    /// Moves the head past every gone holder at it ([`Queue::skip_gone`] until it finds a
    /// live one): a queue whose waiters all died must not look occupied to the next client.
    pub fn prune(&self, alive: &dyn Fn(u32) -> bool) {
        for _ in 0..=QUEUE_CAPACITY {
            if !self.skip_gone(alive) {
                return;
            }
        }
    }

    fn max(&self) -> u32 {
        self.0.max().min(QUEUE_CAPACITY as u32)
    }

    /// Takes a ticket for the client `pid`. Waiters that are not `alive` do not count.
    ///
    /// # Errors
    /// [`QueueFull`] when `max` clients already wait (or 256 tickets are out, most of them
    /// given up behind a waiting head).
    pub fn join(&self, pid: u32, alive: &dyn Fn(u32) -> bool) -> Result<Ticket, QueueFull> {
        let max = self.max();
        // Bounded: every failed compare-and-swap is another client's success (or a scribbler's).
        for _ in 0..1024 {
            let head = self.0.head().load(Ordering::Acquire);
            let tail = self.0.tail().load(Ordering::Acquire);
            let span = tail.wrapping_sub(head);
            if span as usize > QUEUE_CAPACITY {
                // Impossible: scribbled, or a wrap we cannot explain. Empty the queue; every
                // ticket it held is now past its turn and goes ahead.
                let _ = self
                    .0
                    .head()
                    .compare_exchange(head, tail, Ordering::AcqRel, Ordering::Acquire);
                continue;
            }
            // Tickets left early still take an entry until the head passes them; dead holders
            // (asked only when the count says full) do not count.
            let mut waiting = self.live(head, span, None);
            if waiting >= max {
                waiting = self.live(head, span, Some(alive));
            }
            if waiting >= max || span as usize >= QUEUE_CAPACITY {
                return Err(QueueFull { waiting, max });
            }
            if self
                .0
                .tail()
                .compare_exchange(tail, tail.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let t = Ticket(tail);
                self.0.entry(t.entry()).store(t.tagged(pid), Ordering::Release);
                return Ok(t);
            }
        }
        Err(QueueFull {
            waiting: self.waiting(),
            max,
        })
    }

    /// Whether `t`'s turn has come (or passed: its holder goes ahead either way).
    pub fn turn_of(&self, t: Ticket) -> bool {
        let head = self.0.head().load(Ordering::Acquire);
        // head at or beyond t, in wrapping order.
        (head.wrapping_sub(t.0) as i32) >= 0
    }

    /// Skips the ticket at the head if its holder is gone: its entry freed or another
    /// ticket's (it left, or has not written it yet — it then finds its turn passed and goes
    /// ahead), or its pid not `alive`. Returns whether the head moved.
    pub fn skip_gone(&self, alive: &dyn Fn(u32) -> bool) -> bool {
        let head = self.0.head().load(Ordering::Acquire);
        let tail = self.0.tail().load(Ordering::Acquire);
        if head == tail {
            return false;
        }
        let at = Ticket(head);
        let e = self.0.entry(at.entry()).load(Ordering::Acquire);
        let (ticket, pid) = ((e >> 32) as u32, e as u32);
        if e != 0 && ticket == head && alive(pid) {
            return false;
        }
        self.0
            .head()
            .compare_exchange(head, head.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives `t` back (its holder took a slot, or stops waiting): its entry freed, and the
    /// turn passed on if it was `t`'s.
    pub fn leave(&self, t: Ticket, pid: u32) {
        let _ =
            self.0
                .entry(t.entry())
                .compare_exchange(t.tagged(pid), 0, Ordering::AcqRel, Ordering::Acquire);
        let _ = self
            .0
            .head()
            .compare_exchange(t.0, t.0.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Queue words in private memory (tests, models).
#[derive(Debug)]
pub struct MemQueue {
    /// `queue_max`.
    pub max: u32,
    tail: AtomicU32,
    head: AtomicU32,
    entries: Box<[AtomicU64]>,
}

impl MemQueue {
    /// An empty queue of at most `max` waiters.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            tail: AtomicU32::new(0),
            head: AtomicU32::new(0),
            entries: (0..QUEUE_CAPACITY).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// A copy of a queue's words (e.g. read from a page without mapping it).
    pub fn from_words(max: u32, tail: u32, head: u32, entries: &[u64; QUEUE_CAPACITY]) -> Self {
        Self {
            max,
            tail: AtomicU32::new(tail),
            head: AtomicU32::new(head),
            entries: entries.iter().map(|&e| AtomicU64::new(e)).collect(),
        }
    }
}

impl QueueWords for &MemQueue {
    fn max(&self) -> u32 {
        self.max
    }
    fn tail(&self) -> &AtomicU32 {
        &self.tail
    }
    fn head(&self) -> &AtomicU32 {
        &self.head
    }
    fn entry(&self, i: usize) -> &AtomicU64 {
        &self.entries[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIVE: &dyn Fn(u32) -> bool = &|_| true;

    #[test]
    fn tickets_take_turns_in_order() {
        let m = MemQueue::new(4);
        let q = Queue(&m);
        let a = q.join(10, ALIVE).unwrap();
        let b = q.join(11, ALIVE).unwrap();
        let c = q.join(12, ALIVE).unwrap();
        assert_eq!(q.waiting(), 3);
        assert!(q.turn_of(a) && !q.turn_of(b) && !q.turn_of(c));
        q.leave(a, 10);
        assert!(q.turn_of(b) && !q.turn_of(c));
        q.leave(b, 11);
        assert!(q.turn_of(c));
        q.leave(c, 12);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn a_full_queue_refuses_with_its_depth() {
        let m = MemQueue::new(2);
        let q = Queue(&m);
        let a = q.join(1, ALIVE).unwrap();
        q.join(2, ALIVE).unwrap();
        assert_eq!(q.join(3, ALIVE), Err(QueueFull { waiting: 2, max: 2 }));
        q.leave(a, 1);
        assert!(q.join(3, ALIVE).is_ok());
        // max 0: nobody waits.
        let none = MemQueue::new(0);
        assert_eq!(Queue(&none).join(1, ALIVE), Err(QueueFull { waiting: 0, max: 0 }));
    }

    #[test]
    fn a_waiter_behind_a_dead_or_departed_head_skips_it() {
        let m = MemQueue::new(8);
        let q = Queue(&m);
        let dead = q.join(66, ALIVE).unwrap();
        let left = q.join(67, ALIVE).unwrap();
        let me = q.join(68, ALIVE).unwrap();
        // A live head is never skipped.
        assert!(!q.skip_gone(ALIVE));
        // The head's holder died: skipped.
        assert!(q.skip_gone(&|pid| pid != 66));
        assert!(q.turn_of(dead) && q.turn_of(left) && !q.turn_of(me));
        // The next one left before its turn (timed out): its freed entry is skipped.
        q.leave(left, 67);
        assert!(q.turn_of(me));
        // Leaving again, or leaving a ticket not at the head, moves nothing.
        q.leave(left, 67);
        assert!(q.turn_of(me) && q.waiting() == 1);
    }

    /// Waiters that all died (SIGKILL: none gave its ticket back) leave a queue that looks
    /// full: the next client does not count them, and pruning empties the queue.
    #[test]
    fn dead_waiters_neither_fill_the_queue_nor_stay_in_it() {
        let m = MemQueue::new(2);
        let q = Queue(&m);
        q.join(66, ALIVE).unwrap();
        q.join(67, ALIVE).unwrap();
        let dead = |pid: u32| pid != 66 && pid != 67;
        assert_eq!(q.waiting(), 2);
        let t = q.join(5, &dead).expect("dead waiters counted against the bound");
        q.prune(&dead);
        assert_eq!(q.waiting(), 1);
        assert!(q.turn_of(t));
    }

    #[test]
    fn a_waiter_that_left_early_is_not_counted() {
        let m = MemQueue::new(2);
        let q = Queue(&m);
        let _head = q.join(1, ALIVE).unwrap();
        let quitter = q.join(2, ALIVE).unwrap();
        assert!(q.join(3, ALIVE).is_err());
        q.leave(quitter, 2);
        assert_eq!(q.waiting(), 1);
        // Its place is free again though its ticket is not passed yet.
        let late = q.join(3, ALIVE).unwrap();
        assert_eq!(q.waiting(), 2);
        assert!(!q.turn_of(late));
    }

    #[test]
    fn a_ticket_whose_entry_is_not_written_yet_is_skipped_and_goes_ahead() {
        let m = MemQueue::new(8);
        let q = Queue(&m);
        // Ticket 0 taken (tail moved) but its entry not written yet.
        m.tail.store(1, Ordering::SeqCst);
        let behind = q.join(5, ALIVE).unwrap();
        assert!(q.skip_gone(ALIVE));
        assert!(q.turn_of(behind));
        // Ticket 0's holder then finds its turn passed: it goes ahead too.
        assert!(q.turn_of(Ticket(0)));
        // An entry left over from an earlier lap (same index, older ticket) is not its.
        let m = MemQueue::new(8);
        let q = Queue(&m);
        m.entries[0].store(Ticket(0).tagged(9), Ordering::SeqCst);
        m.head.store(QUEUE_CAPACITY as u32, Ordering::SeqCst);
        m.tail.store(QUEUE_CAPACITY as u32 + 1, Ordering::SeqCst);
        assert!(q.skip_gone(ALIVE), "a stale lap's entry held the queue");
    }

    #[test]
    fn scribbled_words_heal_and_never_hold_a_ticket_back() {
        let m = MemQueue::new(8);
        let q = Queue(&m);
        let t = q.join(1, ALIVE).unwrap();
        // A scribbler moves the tail far ahead: impossible depth.
        m.tail.store(1_000_000, Ordering::SeqCst);
        assert_eq!(q.waiting(), 0);
        let u = q.join(2, ALIVE).unwrap();
        // The queue was emptied: the old ticket is past its turn, the new one is next.
        assert!(q.turn_of(t) && q.turn_of(u));
        // Head pushed far ahead: every ticket goes ahead (order lost, nobody stuck).
        m.head.store(u.0.wrapping_add(500), Ordering::SeqCst);
        assert!(q.turn_of(u));
        // Wrapping: tickets near u32::MAX order correctly.
        let m = MemQueue::new(8);
        m.head.store(u32::MAX, Ordering::SeqCst);
        m.tail.store(u32::MAX, Ordering::SeqCst);
        let q = Queue(&m);
        let a = q.join(1, ALIVE).unwrap();
        let b = q.join(2, ALIVE).unwrap();
        assert_eq!((a.0, b.0), (u32::MAX, 0));
        assert!(q.turn_of(a) && !q.turn_of(b));
        q.leave(a, 1);
        assert!(q.turn_of(b));
    }

    #[test]
    fn concurrent_joiners_get_distinct_tickets_and_all_are_served_once() {
        let m = MemQueue::new(256);
        let served = AtomicU32::new(0);
        std::thread::scope(|s| {
            for pid in 1..=8u32 {
                let (m, served) = (&m, &served);
                s.spawn(move || {
                    let q = Queue(m);
                    for _ in 0..200 {
                        let t = q.join(pid, ALIVE).unwrap();
                        while !q.turn_of(t) {
                            std::hint::spin_loop();
                        }
                        served.fetch_add(1, Ordering::SeqCst);
                        q.leave(t, pid);
                    }
                });
            }
        });
        assert_eq!(served.load(Ordering::SeqCst), 1600);
        assert_eq!(Queue(&m).waiting(), 0);
    }
}
