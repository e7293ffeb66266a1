//! A two-thread pipeline: one thread decompresses and hashes, the caller's thread extracts. On a
//! two-core machine this overlaps the CPU work of inflating and hashing with the kernel work of
//! creating files, instead of doing one after the other.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 8;

/// Reads what the producer thread sends.
pub struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The producer finished: end of stream.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Runs `source` on a scoped thread, feeding `consume` through a bounded channel; returns what both
/// returned. If `consume` stops early, the producer stops at its next send.
pub fn pipeline<R, T>(source: R, consume: impl FnOnce(&mut ChannelReader) -> T) -> (T, R)
where
    R: Read + Send,
{
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let mut source = source;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut filled = 0;
                let res = loop {
                    match source.read(&mut chunk[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == CHUNK {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                if filled > 0 {
                    chunk.truncate(filled);
                    if tx.send(Ok(chunk)).is_err() {
                        return source;
                    }
                }
                match res {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return source;
                    }
                    Ok(()) if filled < CHUNK => return source,
                    Ok(()) => {}
                }
            }
        });
        let mut reader = ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        };
        let out = consume(&mut reader);
        // Unblock the producer if the consumer stopped before the end.
        drop(reader);
        let source = producer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (out, source)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_everything_through_and_returns_the_source() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let (got, _) = pipeline(&data[..], |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(got, data);
    }

    #[test]
    fn consumer_can_stop_early() {
        let data = vec![1u8; 50 << 20];
        let (n, _) = pipeline(&data[..], |r| {
            let mut b = [0u8; 10];
            r.read(&mut b).unwrap()
        });
        assert_eq!(n, 10);
    }
}
