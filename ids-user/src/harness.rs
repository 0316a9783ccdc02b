//! The one way the daemon runs its workers: every worker, thread or task, is started by
//! [`Workers`], fed through a bounded [`queue`] whose overflow is counted (never blocking the
//! sender), stopped by the one [`Stop`] token, and waited for by one drain bounded in time
//! ([`Workers::shutdown`]). A worker that ends before it was asked to (an error or a panic) is
//! reported on [`Workers::exited`], so the daemon stops instead of running on half alive.
//!
//! Each worker's token is a child of the daemon's: stopping the daemon stops them all, and
//! [`Workers::stop_worker`] stops one alone (a worker replaced on SIGHUP), whose end is then
//! expected and no failure of the daemon. It stays in the drain at shutdown until it has ended.
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::warn;

/// A stop signal: the daemon's, shared by every worker, or one worker's own (a child of the
/// daemon's, stopped with it). Threads look at it, tasks await it.
#[derive(Clone, Default)]
pub(crate) struct Stop(Arc<StopState>);

#[derive(Default)]
struct StopState {
    stopped: AtomicBool,
    notify: Notify,
    /// Stopped with this one.
    children: Mutex<Vec<Weak<StopState>>>,
}

impl Stop {
    pub(crate) fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Returns once [`Stop::stop`] was called.
    pub(crate) async fn stopped(&self) {
        loop {
            // Registered before the flag is read, so a stop between the two is not missed.
            let notified = self.0.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }

    fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
        let children = std::mem::take(&mut *self.0.children.lock().unwrap_or_else(|p| p.into_inner()));
        for child in children.iter().filter_map(Weak::upgrade) {
            Stop(child).stop();
        }
    }

    /// A token stopped with this one, or alone.
    fn child(&self) -> Stop {
        let child = Stop::default();
        let mut children = self.0.children.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock `stop` takes: a child made during a stop is stopped too.
        if self.is_stopped() {
            drop(children);
            child.stop();
            return child;
        }
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&child.0));
        child
    }
}

/// Counters of one queue, shown by `ids status`.
#[derive(Debug, Default)]
pub(crate) struct QueueStats {
    /// Items sent and not yet taken up by the worker (see [`Inbox`]).
    queued: AtomicU64,
    /// Items refused because the queue was full.
    dropped: AtomicU64,
}

impl QueueStats {
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::SeqCst)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Message<T> {
    Item(T),
    /// Look at your other inputs now (a control request, a timer, stop).
    Wake,
}

/// The sending end of a worker's queue; cheap to clone.
pub(crate) struct Sender<T> {
    tx: SyncSender<Message<T>>,
    stats: Arc<QueueStats>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), stats: self.stats.clone() }
    }
}

impl<T> Sender<T> {
    /// Queues `item` without blocking; a full queue counts it as dropped. Returns whether it was queued.
    pub(crate) fn offer(&self, item: T) -> bool {
        // Counted before it is sent, so a status read never shows 0 while an item is in flight.
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Message::Item(item)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Queues `item`, waiting while the queue is full: for producers that can wait, such as a
    /// reader of a pipe whose writer then waits too. Returns false once the worker has stopped.
    pub(crate) fn send_blocking(&self, item: T) -> bool {
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        let sent = self.tx.send(Message::Item(item)).is_ok();
        if !sent {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Whether this sender feeds the queue whose counters are `stats`.
    pub(crate) fn feeds(&self, stats: &Arc<QueueStats>) -> bool {
        Arc::ptr_eq(&self.stats, stats)
    }

    /// Wakes the worker; a full queue wakes it anyway.
    pub(crate) fn wake(&self) {
        let _ = self.tx.try_send(Message::Wake);
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }
}

/// What [`Inbox::recv_timeout`] returns.
pub(crate) enum Received<T> {
    Item(T),
    /// Woken, or the wait ran out: look at the other inputs.
    Idle,
    /// Every sender is gone.
    Closed,
}

/// The receiving end of a worker's queue. An item counts as queued until the worker asks for
/// the next one (it is being handled until then), so a status that reads "nothing queued" means
/// that everything sent has been handled.
pub(crate) struct Inbox<T> {
    rx: Receiver<Message<T>>,
    stats: Arc<QueueStats>,
    taken: u64,
}

impl<T> Inbox<T> {
    fn settle(&mut self) {
        if self.taken > 0 {
            self.stats.queued.fetch_sub(self.taken, Ordering::SeqCst);
            self.taken = 0;
        }
    }

    fn take(&mut self, message: Message<T>) -> Received<T> {
        match message {
            Message::Item(item) => {
                self.taken += 1;
                Received::Item(item)
            }
            Message::Wake => Received::Idle,
        }
    }

    /// The next item, waiting at most `wait`.
    pub(crate) fn recv_timeout(&mut self, wait: Duration) -> Received<T> {
        self.settle();
        match self.rx.recv_timeout(wait) {
            Ok(message) => self.take(message),
            Err(RecvTimeoutError::Timeout) => Received::Idle,
            Err(RecvTimeoutError::Disconnected) => Received::Closed,
        }
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Received<T> {
        self.settle();
        match self.rx.try_recv() {
            Ok(message) => self.take(message),
            Err(TryRecvError::Empty) => Received::Idle,
            Err(TryRecvError::Disconnected) => Received::Closed,
        }
    }

    pub(crate) fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A bounded queue for a worker thread.
pub(crate) fn queue<T>(capacity: usize) -> (Sender<T>, Inbox<T>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let stats = Arc::new(QueueStats::default());
    (Sender { tx, stats: stats.clone() }, Inbox { rx, stats, taken: 0 })
}

/// A worker that ended: its name, and why if it was not asked to.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) worker: &'static str,
    pub(crate) failure: Option<String>,
}

enum Running {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl Running {
    fn is_finished(&self) -> bool {
        match self {
            Running::Thread(thread) => thread.is_finished(),
            Running::Task(task) => task.is_finished(),
        }
    }
}

/// One started worker, to stop it alone ([`Workers::stop_worker`]).
pub(crate) struct WorkerId {
    id: u64,
    stop: Stop,
}

/// One worker as [`Workers`] holds it.
struct Entry {
    id: u64,
    name: &'static str,
    running: Running,
    stop: Stop,
    /// Called at stop to wake a thread blocked on its queue.
    wake: Option<Box<dyn Fn() + Send>>,
}

/// Every worker of the daemon.
pub(crate) struct Workers {
    stop: Stop,
    running: Vec<Entry>,
    next_id: u64,
    exited_tx: mpsc::UnboundedSender<Exited>,
    exited_rx: mpsc::UnboundedReceiver<Exited>,
}

impl Default for Workers {
    fn default() -> Self {
        let (exited_tx, exited_rx) = mpsc::unbounded_channel();
        Self { stop: Stop::default(), running: Vec::new(), next_id: 0, exited_tx, exited_rx }
    }
}

/// What a worker's end means: before its stop, a failure reported on `exited`; after it, the
/// end asked for (an error then is only logged).
fn report_end(name: &'static str, stop: &Stop, failure: Option<String>, exited: &mpsc::UnboundedSender<Exited>) {
    if !stop.is_stopped() {
        let _ = exited.send(Exited { worker: name, failure });
    } else if let Some(error) = failure {
        warn!(worker = name, %error, "worker failed as it stopped");
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

impl Workers {
    pub(crate) fn stop_token(&self) -> Stop {
        self.stop.clone()
    }

    /// Runs `work` on a thread of its own. `wake` is called at stop (it should wake the thread
    /// from its queue wait: [`Sender::wake`]). `work` returning `Err` or panicking before stop
    /// is reported on [`Workers::exited`].
    pub(crate) fn spawn_thread(
        &mut self,
        name: &'static str,
        wake: impl Fn() + Send + 'static,
        work: impl FnOnce(Stop) -> anyhow::Result<()> + Send + 'static,
    ) -> std::io::Result<WorkerId> {
        let stop = self.stop.child();
        let (own, exited) = (stop.clone(), self.exited_tx.clone());
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(stop.clone())));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(crate::error_text::one_line(e.as_ref())),
                Err(panic) => Some(panic_text(panic.as_ref())),
            };
            report_end(name, &stop, failure, &exited);
        })?;
        Ok(self.add(name, Running::Thread(thread), own, Some(Box::new(wake))))
    }

    /// Runs `work` as a task on the runtime; it should end when [`Stop::stopped`] returns.
    pub(crate) fn spawn_task<F>(&mut self, name: &'static str, work: impl FnOnce(Stop) -> F) -> WorkerId
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = self.stop.child();
        let future = work(stop.clone());
        let (own, exited) = (stop.clone(), self.exited_tx.clone());
        let task = tokio::spawn(async move {
            let failure = future.await.err().map(|e| crate::error_text::one_line(e.as_ref()));
            report_end(name, &stop, failure, &exited);
        });
        self.add(name, Running::Task(task), own, None)
    }

    fn add(
        &mut self,
        name: &'static str,
        running: Running,
        stop: Stop,
        wake: Option<Box<dyn Fn() + Send>>,
    ) -> WorkerId {
        // Workers stopped alone and since ended leave the list here.
        self.running.retain(|entry| !(entry.stop.is_stopped() && entry.running.is_finished()));
        self.next_id += 1;
        let id = self.next_id;
        self.running.push(Entry { id, name, running, stop: stop.clone(), wake });
        WorkerId { id, stop }
    }

    /// Stops one worker (and wakes it): its end is expected, not a failure. It is waited for at
    /// shutdown if it has not ended by then.
    pub(crate) fn stop_worker(&mut self, worker: &WorkerId) {
        worker.stop.stop();
        if let Some(wake) = self.running.iter().find(|entry| entry.id == worker.id).and_then(|e| e.wake.as_ref()) {
            wake();
        }
    }

    /// The next worker that ended (before stop: a failure the daemon should not outlive).
    pub(crate) async fn exited(&mut self) -> Exited {
        match self.exited_rx.recv().await {
            Some(exited) => exited,
            // The sender lives in `self`: never reached.
            None => std::future::pending().await,
        }
    }

    /// Signals stop, wakes every thread, and waits for every worker, `drain` at most in all;
    /// names the ones that did not finish.
    pub(crate) async fn shutdown(self, drain: Duration) {
        self.stop.stop();
        for wake in self.running.iter().filter_map(|entry| entry.wake.as_ref()) {
            wake();
        }
        let deadline = Instant::now() + drain;
        for Entry { name, running, .. } in self.running {
            let left = deadline.saturating_duration_since(Instant::now());
            let finished = match running {
                Running::Task(task) => tokio::time::timeout(left, task).await.is_ok(),
                Running::Thread(thread) => {
                    tokio::time::timeout(left, tokio::task::spawn_blocking(move || thread.join())).await.is_ok()
                }
            };
            if !finished {
                warn!(worker = name, drain_s = drain.as_secs(), "worker did not finish in time; left behind");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_counts_drops_and_items_stay_queued_until_the_next_receive() {
        let (tx, mut inbox) = queue::<u32>(2);
        assert!(tx.offer(1));
        assert!(tx.offer(2));
        assert!(!tx.offer(3));
        assert_eq!((tx.stats().queued(), tx.stats().dropped()), (2, 1));
        assert!(matches!(inbox.try_recv(), Received::Item(1)));
        // Item 1 is being handled: still counted.
        assert_eq!(inbox.stats().queued(), 2);
        assert!(matches!(inbox.try_recv(), Received::Item(2)));
        assert_eq!(inbox.stats().queued(), 1);
        assert!(matches!(inbox.try_recv(), Received::Idle));
        assert_eq!(inbox.stats().queued(), 0);
        drop(tx);
        assert!(matches!(inbox.recv_timeout(Duration::from_millis(1)), Received::Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_wakes_threads_and_stops_tasks_and_a_failure_is_reported() {
        let mut workers = Workers::default();
        let (tx, mut inbox) = queue::<()>(4);
        let waker = tx.clone();
        workers
            .spawn_thread(
                "waits",
                move || waker.wake(),
                move |stop| {
                    while !stop.is_stopped() {
                        // A long wait: only the wake at stop ends it in time.
                        let _ = inbox.recv_timeout(Duration::from_secs(60));
                    }
                    Ok(())
                },
            )
            .unwrap();
        workers.spawn_task("task", |stop| async move {
            stop.stopped().await;
            Ok(())
        });
        workers.spawn_thread("fails", || {}, |_| anyhow::bail!("broken input")).unwrap();
        let exited = tokio::time::timeout(Duration::from_secs(5), workers.exited()).await.unwrap();
        assert_eq!(exited.worker, "fails");
        assert_eq!(exited.failure.as_deref(), Some("broken input"));
        let started = Instant::now();
        workers.shutdown(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
        drop(tx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_stopped_alone_ends_without_counting_as_a_failure_and_the_others_run_on() {
        let mut workers = Workers::default();
        let (tx, mut inbox) = queue::<()>(4);
        let waker = tx.clone();
        let replaced = workers
            .spawn_thread(
                "replaced",
                move || waker.wake(),
                move |stop| {
                    while !stop.is_stopped() {
                        let _ = inbox.recv_timeout(Duration::from_secs(60));
                    }
                    Ok(())
                },
            )
            .unwrap();
        let task = workers.spawn_task("task", |stop| async move {
            stop.stopped().await;
            anyhow::bail!("stopped with an error")
        });
        let other = workers.spawn_task("other", |stop| async move {
            stop.stopped().await;
            Ok(())
        });
        workers.stop_worker(&replaced);
        workers.stop_worker(&task);
        assert!(tokio::time::timeout(Duration::from_millis(500), workers.exited()).await.is_err());
        assert!(!other.stop.is_stopped());
        let started = Instant::now();
        workers.shutdown(Duration::from_secs(10)).await;
        assert!(other.stop.is_stopped());
        assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
        drop(tx);
    }
}
