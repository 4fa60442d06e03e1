//! The scan thread and its queue: full mac1 scans the core admitted, run off the receive
//! threads, most trusted class first.
//!
//! One queue per [`ScanClass`], each bounded on its own. With a single queue, junk of one class
//! kept it full whenever the scan thread fell behind, and a new peer's first handshake (or a
//! known endpoint's) was abandoned behind it: the budget bounds what each class may spend, not
//! how fast the thread gets through it on a busy machine.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wpex_proto::{Relay, ScanClass, ScanRequest};

use crate::shared::{Counters, SharedRelay, lock};

/// Scans waiting per class; a full one drops the scan, counted, rather than queueing without
/// bound. Deep enough for about 14 ms of the fastest flood measured here (300,000 fresh scans a
/// second, all within budget with 3 keys): with 64, the queue overflowed whenever the scan
/// thread waited a moment for a core, and 5% of first handshakes were dropped, a new peer's
/// among them. At most 4096 datagrams a class, about 1 MiB.
const PER_CLASS: usize = 4096;

/// The order the scan thread serves the classes in. A source refused before (retry) comes
/// before fresh ones, so a flood of first handshakes cannot starve a peer's retry.
const PRIORITY: [ScanClass; 5] = [
    ScanClass::Known,
    ScanClass::Proven,
    ScanClass::Retry,
    ScanClass::Fresh,
    ScanClass::Other,
];

/// While scans keep coming, the scan thread dozes this long between looks at the queue, up to
/// [`DOZES`] times, then sleeps until a push wakes it. A push wakes a dozing thread only when a
/// class's queue is half full: a wake-up is a system call on the receive thread, and a short
/// doze (1 ms) woke the scan thread a thousand times a second beside it, which made the receive
/// thread's own wake-ups dearer (issue 18 has the figures).
const DOZE: Duration = Duration::from_millis(5);
const DOZES: u32 = 4;

/// What the scan thread is doing, for a push to decide whether to wake it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// Running scans, or about to look at the queue: it finds the job without a wake-up.
    No,
    /// Waiting [`DOZE`] at most.
    Dozing,
    /// Waiting for a push.
    Asleep,
}

/// A scan the core asked for, with what the scan thread needs to finish it.
pub(super) struct ScanJob {
    pub(super) request: ScanRequest,
    pub(super) src: SocketAddr,
    pub(super) datagram: Vec<u8>,
    /// The socket the handshake arrived on, to send the outcome from.
    pub(super) socket: Arc<UdpSocket>,
}

struct Queues<T> {
    by_class: [VecDeque<T>; ScanClass::ALL.len()],
    waiting: Waiting,
    closed: bool,
}

impl<T> Queues<T> {
    fn pop(&mut self) -> Option<T> {
        PRIORITY
            .iter()
            .find_map(|class| self.by_class[*class as usize].pop_front())
    }

    /// Whether a push that left `queued` jobs in its class must wake the scan thread; if so,
    /// it counts as awake from now on, so that one wake-up serves the pushes until it looks.
    fn wake_after_push(&mut self, queued: usize) -> bool {
        let wake = match self.waiting {
            Waiting::No => false,
            Waiting::Dozing => queued >= PER_CLASS / 2,
            Waiting::Asleep => true,
        };
        if wake {
            self.waiting = Waiting::No;
        }
        wake
    }
}

/// The receive threads push, the scan thread pops.
pub(super) struct ScanQueue<T = ScanJob> {
    queues: Mutex<Queues<T>>,
    woken: Condvar,
}

impl<T> Default for ScanQueue<T> {
    fn default() -> Self {
        Self {
            queues: Mutex::new(Queues {
                by_class: Default::default(),
                waiting: Waiting::No,
                closed: false,
            }),
            woken: Condvar::new(),
        }
    }
}

impl<T> ScanQueue<T> {
    fn queues(&self) -> std::sync::MutexGuard<'_, Queues<T>> {
        // A queue is consistent between any two statements, so a panic elsewhere leaves it usable.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` of `class`, or hands it back if that class's queue is full or the queue is
    /// closed. While scans keep coming the scan thread dozes, and a receive thread hands a job
    /// over without a system call (see [`DOZE`]).
    pub(super) fn push(&self, class: ScanClass, job: T) -> Result<(), T> {
        let mut q = self.queues();
        let closed = q.closed;
        let queue = &mut q.by_class[class as usize];
        if queue.len() >= PER_CLASS || closed {
            return Err(job);
        }
        queue.push_back(job);
        let queued = queue.len();
        if q.wake_after_push(queued) {
            self.woken.notify_one();
        }
        Ok(())
    }

    /// The next scan, most trusted class first, or `None` once closed. Dozes [`DOZES`] times,
    /// then sleeps until a push, so an idle relay does not spin.
    fn next(&self) -> Option<T> {
        let mut q = self.queues();
        let mut dozes = 0;
        loop {
            q.waiting = Waiting::No;
            if let Some(job) = q.pop() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            if dozes < DOZES {
                dozes += 1;
                q.waiting = Waiting::Dozing;
                q = match self.woken.wait_timeout(q, DOZE) {
                    Ok((q, _)) => q,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            } else {
                q.waiting = Waiting::Asleep;
                q = self.woken.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Ends the scan thread once it has run what is queued; later pushes are refused.
    pub(super) fn close(&self) {
        self.queues().closed = true;
        self.woken.notify_all();
    }
}

/// Hands a scan the core asked for to the scan thread; if its class's queue is full, the core
/// counts the scan as abandoned.
pub(super) fn queue_scan(
    core: &mut Relay,
    queue: &ScanQueue,
    request: &ScanRequest,
    src: SocketAddr,
    datagram: &[u8],
    socket: &Arc<UdpSocket>,
) {
    let job = ScanJob {
        request: request.clone(),
        src,
        datagram: datagram.to_vec(),
        socket: socket.clone(),
    };
    if queue.push(request.class(), job).is_err() {
        core.scan_abandoned(src, request.class());
    }
}

/// Runs the scans the core admitted, then hands each result back under the lock. Ends when the
/// queue is closed.
pub(super) fn scan_loop(relay: &SharedRelay, queue: &ScanQueue, errors: &Counters) {
    while let Some(mut job) = queue.next() {
        let done = job.request.run(&job.datagram);
        let output = lock(relay).handle_scanned(Instant::now(), job.src, &mut job.datagram, done);
        let (bytes, targets) = super::transmissions(&output, &job.datagram);
        // The socket blocks for its receive thread; this send does not wait: a full socket
        // buffer drops this one datagram, as the network may.
        let socket = socket2::SockRef::from(&*job.socket);
        for to in targets {
            if let Err(e) = socket.send_to_with_flags(bytes, &(*to).into(), libc::MSG_DONTWAIT) {
                errors.io_error("send", Some(*to), &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_a_place_in_the_order() {
        for class in ScanClass::ALL {
            assert_eq!(
                PRIORITY.iter().filter(|c| **c == class).count(),
                1,
                "{class:?}"
            );
        }
    }

    #[test]
    fn a_full_class_refuses_only_its_own_jobs() {
        let queue = ScanQueue::default();
        for i in 0..PER_CLASS {
            assert!(queue.push(ScanClass::Other, i).is_ok());
        }
        assert_eq!(queue.push(ScanClass::Other, PER_CLASS), Err(PER_CLASS));
        assert_eq!(queue.push(ScanClass::Fresh, 1000), Ok(()));
        // The fresh job jumps the junk queued before it.
        assert_eq!(queue.next(), Some(1000));
        assert_eq!(queue.next(), Some(0));
    }

    #[test]
    fn jobs_come_out_most_trusted_class_first_in_order_within_a_class() {
        let queue = ScanQueue::default();
        let pushed = [
            (ScanClass::Other, "other"),
            (ScanClass::Fresh, "fresh 1"),
            (ScanClass::Fresh, "fresh 2"),
            (ScanClass::Retry, "retry"),
            (ScanClass::Proven, "proven"),
            (ScanClass::Known, "known"),
        ];
        for (class, job) in pushed {
            assert!(queue.push(class, job).is_ok());
        }
        let order: Vec<_> = std::iter::from_fn(|| {
            let q = &mut queue.queues();
            q.pop()
        })
        .collect();
        assert_eq!(
            order,
            ["known", "proven", "retry", "fresh 1", "fresh 2", "other"]
        );
    }

    #[test]
    fn a_push_wakes_a_sleeping_thread_a_dozing_one_only_at_half_full_and_a_busy_one_never() {
        let queue = ScanQueue::<usize>::default();
        let mut q = queue.queues();
        q.waiting = Waiting::Asleep;
        assert!(q.wake_after_push(1));
        assert_eq!(
            q.waiting,
            Waiting::No,
            "one wake-up serves the pushes after it"
        );
        assert!(!q.wake_after_push(PER_CLASS));
        q.waiting = Waiting::Dozing;
        assert!(!q.wake_after_push(PER_CLASS / 2 - 1));
        assert!(q.wake_after_push(PER_CLASS / 2));
        assert!(!q.wake_after_push(PER_CLASS / 2 + 1));
    }

    #[test]
    fn a_sleeping_scan_thread_is_woken_by_a_push_and_ends_at_close() {
        let queue = Arc::new(ScanQueue::default());
        let thread = {
            let queue = queue.clone();
            std::thread::spawn(move || std::iter::from_fn(|| queue.next()).collect::<Vec<_>>())
        };
        // Past its dozes the thread sleeps on the condition variable; the push must wake it.
        while queue.queues().waiting != Waiting::Asleep {
            std::thread::yield_now();
        }
        assert!(queue.push(ScanClass::Known, 7).is_ok());
        // A liveness guard, not a measurement: a thread left asleep never takes the job.
        let deadline = Instant::now() + Duration::from_secs(30);
        while queue.queues().by_class[ScanClass::Known as usize].len() == 1 {
            assert!(
                Instant::now() < deadline,
                "the push did not wake the scan thread"
            );
            std::thread::yield_now();
        }
        queue.close();
        assert_eq!(queue.push(ScanClass::Known, 8), Err(8), "closed");
        assert_eq!(thread.join().ok(), Some(vec![7]));
    }
}
