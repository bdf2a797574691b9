//! [`BatchWriter`]: log lines appended to a shared buffer and written out by one thread, a
//! window at a time.
//!
//! Why not a channel to a writer thread (tracing-appender's design, used before): that thread
//! is woken for nearly every line under load, and each wake-up is a futex call on the request's
//! thread plus a `write(2)`: together about a third of the CPU of a cache hit. Here a request
//! thread takes an uncontended lock and copies its line; only the first line after the buffer
//! was emptied wakes the writer, which then waits [`WINDOW`] for more lines and writes them all
//! with one `write(2)`. Lines are never dropped: past [`MAX_PENDING`] bytes the request thread
//! writes the buffer out itself (back-pressure when the output is slower than the logging),
//! and dropping the [`FlushGuard`] writes out what is left.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::shared::lock;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer collects lines after the first one arrives: the most a line waits.
pub(crate) const WINDOW: Duration = Duration::from_millis(20);

/// Buffered bytes beyond which the logging thread writes the buffer out itself.
pub(crate) const MAX_PENDING: usize = 4 * 1024 * 1024;

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while writing out, so batches reach the output in the order they were taken.
    output: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

impl Shared {
    /// Takes what is pending and writes it out, in order with every other batch.
    fn write_out(&self) {
        let mut output = lock(&self.output);
        let batch = {
            let mut pending = lock(&self.pending);
            // The next batch starts at this one's size: no reallocation while lines arrive.
            let capacity = pending.buf.len().min(MAX_PENDING);
            std::mem::replace(&mut pending.buf, Vec::with_capacity(capacity))
        };
        if !batch.is_empty() {
            // Nowhere to report a failing stderr; the lines are lost either way.
            let _ = output.write_all(&batch);
            let _ = output.flush();
        }
    }
}

/// The `MakeWriter` handed to tracing-subscriber; clones share one buffer.
#[derive(Clone)]
pub(crate) struct BatchWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

/// Stops the writer thread after writing out every pending line.
#[must_use = "dropping the guard stops the log writer"]
pub(crate) struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FlushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushGuard").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// A writer to `output`, with its writer thread. Should the thread fail to start, every
    /// line is written out on the thread that logs it.
    pub(crate) fn new(output: impl Write + Send + 'static) -> (Self, FlushGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            output: Mutex::new(Box::new(output)),
        });
        let thread = std::thread::Builder::new()
            .name("amqp-gateway-log".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared)
            })
            .ok();
        if thread.is_none() {
            lock(&shared.pending).closed = true;
        }
        (
            Self {
                shared: shared.clone(),
            },
            FlushGuard { shared, thread },
        )
    }
}

/// The writer thread: sleep until a line arrives, collect for one window, write, repeat.
fn run(shared: &Shared) {
    loop {
        let closed = {
            let mut pending = lock(&shared.pending);
            while pending.buf.is_empty() && !pending.closed {
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.closed
        };
        if !closed {
            std::thread::sleep(WINDOW);
        }
        shared.write_out();
        if closed {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Lines logged after the thread's last batch.
        self.shared.write_out();
    }
}

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let (first, now) = {
            let mut pending = lock(&self.shared.pending);
            let first = pending.buf.is_empty();
            pending.buf.extend_from_slice(line);
            // Full, or the writer thread has stopped (shutting down): write it ourselves.
            (first, pending.buf.len() > MAX_PENDING || pending.closed)
        };
        if now {
            self.shared.write_out();
        } else if first {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_support::Sink;
    use std::time::Instant;

    #[test]
    fn lines_arrive_whole_in_order_and_within_the_window() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::new(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.write_all(format!("t{t} line {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = String::from_utf8(sink.bytes()).unwrap();
            if text.lines().count() == 4000 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn dropping_the_guard_writes_everything_out() {
        let sink = Sink::default();
        let (mut writer, guard) = BatchWriter::new(sink.clone());
        writer.write_all(b"before\n").unwrap();
        drop(guard);
        assert_eq!(sink.bytes(), b"before\n");
        writer.write_all(b"after\n").unwrap();
        assert_eq!(sink.bytes(), b"before\nafter\n");
    }

    /// Records which thread wrote.
    #[derive(Clone, Default)]
    struct Writers(Arc<Mutex<Vec<String>>>);

    impl Write for Writers {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            lock(&self.0).push(name);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let writers = Writers::default();
        let (mut writer, _guard) = BatchWriter::new(writers.clone());
        std::thread::Builder::new()
            .name("request".into())
            .spawn(move || writer.write_all(&vec![b'x'; MAX_PENDING + 1]).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(lock(&writers.0).as_slice(), ["request"]);
    }
}
