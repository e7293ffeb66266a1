//! Deadlines on every network transfer: a connect timeout, an idle timeout (no byte for that
//! long), and a minimum transfer rate averaged over a window. A server that accepts and never
//! answers, or sends a manifest one byte every two seconds, or a blob one byte every 299 s (each
//! under a per-read timeout), ends the command with one line naming the server and what stalled.
//!
//! Configurable in `<config>/registries.json`:
//! `"timeouts": {"connect_seconds": 30, "idle_seconds": 30, "min_bytes_per_second": 1024, "window_seconds": 30}`.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// The deadlines in force.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    pub connect_seconds: u64,
    pub idle_seconds: u64,
    pub min_bytes_per_second: u64,
    pub window_seconds: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect_seconds: 30,
            idle_seconds: 30,
            min_bytes_per_second: 1024,
            window_seconds: 30,
        }
    }
}

impl Deadlines {
    pub fn connect(&self) -> Duration {
        Duration::from_secs(self.connect_seconds.max(1))
    }

    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_seconds.max(1))
    }

    /// A guard for one transfer.
    pub fn rate(&self) -> Rate {
        Rate {
            min: self.min_bytes_per_second,
            window: Duration::from_secs(self.window_seconds.max(1)),
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// The next chunk of `next`, or an error if none comes within the idle timeout.
    pub async fn chunk<T>(&self, next: impl std::future::Future<Output = T>, what: &str) -> Result<T, String> {
        tokio::time::timeout(self.idle(), next)
            .await
            .map_err(|_| format!("{what}: nothing arrived for {} s (idle timeout)", self.idle().as_secs()))
    }
}

/// The minimum rate over consecutive windows of one transfer.
#[derive(Debug)]
pub struct Rate {
    min: u64,
    window: Duration,
    start: Instant,
    bytes: u64,
}

impl Rate {
    /// Counts `n` bytes; an error once a whole window went by below the minimum rate.
    pub fn on(&mut self, n: usize, what: &str) -> Result<(), String> {
        self.bytes += n as u64;
        let elapsed = self.start.elapsed();
        if elapsed >= self.window {
            let rate = self.bytes as f64 / elapsed.as_secs_f64();
            if rate < self.min as f64 {
                return Err(format!(
                    "{what}: {rate:.0} bytes/s over the last {} s, below the minimum of {} (min_bytes_per_second)",
                    elapsed.as_secs(),
                    self.min
                ));
            }
            self.start = Instant::now();
            self.bytes = 0;
        }
        Ok(())
    }
}
