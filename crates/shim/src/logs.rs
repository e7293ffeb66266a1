//! Container logs: JSON lines in Docker's json-file shape, rotated (10 MiB x 3 by default), each
//! record carrying the sha256 of the previous one, so that an edited, removed or reordered record
//! breaks the chain. A `head` file holds the hash of the last record and the count, so that cutting
//! records off the end is found too.
//!
//! ```text
//! logs/container.log     newest          {"log":"hi\n","stream":"stdout","time":"...","prev":"<hex>"}
//! logs/container.log.1   older (.2, ...)
//! logs/head              {"last":"<hex of the last record>","records":N}
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Rotation: the size of one file, and how many files are kept.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_MAX_FILES: u32 = 3;
/// Docker splits lines longer than this into several records.
const MAX_LINE: usize = 16 << 10;
/// The head record is written in place at this fixed size.
const HEAD_SIZE: usize = 160;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One log record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub log: String,
    pub stream: String,
    pub time: String,
    pub prev: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Head {
    last: String,
    records: u64,
}

/// Appends records for one container; used by its shim only.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    last: String,
    records: u64,
    max_size: u64,
    max_files: u32,
    partial: [Vec<u8>; 2],
    durable: bool,
    /// The head file, kept open for in-place updates.
    head: Option<File>,
}

fn io(p: &Path, e: std::io::Error) -> Error {
    Error(format!("{}: {e}", p.display()))
}

fn hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

impl LogWriter {
    /// Opens (or continues) the log in `dir`.
    pub fn open(dir: &Path, max_size: u64, max_files: u32) -> Result<Self> {
        // A container's output can hold secrets, and container paths show in /proc/self/mountinfo
        // to every user: the log is root's alone.
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))?;
        let head: Head = fs::read(dir.join("head"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        let path = dir.join("container.log");
        let file = open_log(&path)?;
        let mut size = file.metadata().map_err(|e| io(&path, e))?.len();
        // A record cut short by a crash (no newline) was never a record, and the next one must
        // not be glued onto it: the file is cut back to its last whole line.
        if let Some(whole) = torn_tail(&path, size) {
            file.set_len(whole).map_err(|e| io(&path, e))?;
            size = whole;
        }
        let mut last = if head.last.is_empty() { GENESIS.to_owned() } else { head.last };
        let mut records = head.records;
        // A shim killed between writing a record and the head leaves the head one record behind:
        // the record after it continues the chain, so the chain goes on from that record (and the
        // head catches up with the next write). Anything else is left for `verify` to report.
        if let Some(tail) = last_line(&path, size) {
            if let Ok(rec) = serde_json::from_slice::<Record>(&tail) {
                if rec.prev == last && hash(&tail) != last {
                    last = hash(&tail);
                    records += 1;
                }
            }
        }
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            last,
            records,
            max_size: max_size.max(4096),
            max_files: max_files.max(1),
            partial: [Vec::new(), Vec::new()],
            durable: true,
            head: None,
        })
    }

    /// A log that `close` does not force to disk: for a container removed when it exits.
    pub fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Takes output of a stream ("stdout" or "stderr"); complete lines become records.
    pub fn write(&mut self, stream: &str, data: &[u8]) -> Result<()> {
        let i = usize::from(stream == "stderr");
        self.partial[i].extend_from_slice(data);
        loop {
            let buf = &self.partial[i];
            let cut = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => p + 1,
                None if buf.len() >= MAX_LINE => MAX_LINE,
                None => break,
            };
            let line: Vec<u8> = self.partial[i].drain(..cut).collect();
            self.append(stream, &line)?;
        }
        Ok(())
    }

    /// Writes out partial lines (at exit) and records the head durably.
    pub fn close(&mut self) -> Result<()> {
        for (i, stream) in ["stdout", "stderr"].iter().enumerate() {
            if !self.partial[i].is_empty() {
                let line = std::mem::take(&mut self.partial[i]);
                self.append(stream, &line)?;
            }
        }
        if self.durable {
            self.file.sync_all().map_err(|e| io(&self.dir, e))?;
        }
        self.save_head(self.durable)
    }

    fn append(&mut self, stream: &str, line: &[u8]) -> Result<()> {
        let rec = Record {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: stream.to_owned(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            prev: self.last.clone(),
        };
        let text = serde_json::to_vec(&rec).map_err(|e| Error(e.to_string()))?;
        if self.size > 0 && self.size + text.len() as u64 + 1 > self.max_size {
            self.rotate()?;
        }
        let mut out = text.clone();
        out.push(b'\n');
        self.file.write_all(&out).map_err(|e| io(&self.dir, e))?;
        self.size += out.len() as u64;
        self.last = hash(&text);
        self.records += 1;
        self.save_head(false)
    }

    fn save_head(&mut self, durable: bool) -> Result<()> {
        let data = serde_json::to_vec(&Head {
            last: self.last.clone(),
            records: self.records,
        })
        .map_err(|e| Error(e.to_string()))?;
        if durable {
            self.head = None;
            crate::durable_write(&self.dir.join("head"), &data)
        } else {
            // In place, one pwrite of a fixed-size record (the JSON padded with spaces, which a
            // reader skips): a temporary file and a rename per record held logging to ~4,000
            // records a second. Every record still updates the head, so nothing of the tamper
            // evidence is lost. The head is replaced whole (atomically, forced) at close.
            use std::os::unix::fs::FileExt;
            let mut rec = data;
            rec.resize(HEAD_SIZE.max(rec.len()), b' ');
            let head = self.dir.join("head");
            if self.head.is_none() {
                self.head = Some(
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&head)
                        .map_err(|e| io(&head, e))?,
                );
            }
            let f = self.head.as_ref().ok_or_else(|| Error("no head file".into()))?;
            f.write_all_at(&rec, 0).map_err(|e| io(&head, e))
        }
    }

    fn rotate(&mut self) -> Result<()> {
        let name = |n: u32| {
            if n == 0 {
                self.dir.join("container.log")
            } else {
                self.dir.join(format!("container.log.{n}"))
            }
        };
        let _ = fs::remove_file(name(self.max_files - 1));
        for n in (0..self.max_files - 1).rev() {
            if name(n).exists() {
                fs::rename(name(n), name(n + 1)).map_err(|e| io(&name(n), e))?;
            }
        }
        let path = name(0);
        self.file = open_log(&path)?;
        self.size = 0;
        Ok(())
    }
}

/// The longest a record can be: a line of control characters, each written as `\u00XX`, plus
/// the other fields.
const MAX_RECORD: u64 = 6 * MAX_LINE as u64 + 4096;

/// Where the last whole line of the log ends, when the file ends in a part of a line no longer
/// than a record; None when it ends with a newline (or the tail is not a cut record).
fn torn_tail(path: &Path, size: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let want = size.min(MAX_RECORD);
    if want == 0 {
        return None;
    }
    let mut buf = vec![0u8; want as usize];
    File::open(path).ok()?.read_exact_at(&mut buf, size - want).ok()?;
    if buf.last() == Some(&b'\n') {
        return None;
    }
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(p) => Some(size - want + p as u64 + 1),
        None if want == size => Some(0),
        None => None,
    }
}

/// The last complete line of the log file (without its newline), if it is short enough to be a
/// record.
fn last_line(path: &Path, size: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let want = size.min(MAX_RECORD);
    let mut buf = vec![0u8; want as usize];
    File::open(path).ok()?.read_exact_at(&mut buf, size - want).ok()?;
    if buf.pop()? != b'\n' {
        return None;
    }
    let start = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if start == 0 && want < size {
        return None;
    }
    Some(buf.split_off(start))
}

fn open_log(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))
}

/// The log files of a container, oldest first.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("container.log.")
                        .and_then(|k| k.parse::<u32>().ok())
                        .map(|k| (k, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = dir.join("container.log");
    if current.exists() {
        out.push(current);
    }
    out
}

/// Follows a log as it grows (`logs -f`): the first [`Follower::poll`] returns every record kept,
/// each later one only what was written since, reading from where the last one stopped. A
/// rotation is noticed by the current file's inode changing: the old file is read to its end
/// through the descriptor still open on it (renamed, it is the same file), a file rotated away in
/// between is read whole, then the new file from its start. Re-reading and re-parsing every kept
/// file on each poll (up to ~30 MiB, five times a second) cost a follower 40 % of a core, and a
/// count of records could not tell a rotation from nothing new once the log was full.
pub struct Follower {
    dir: PathBuf,
    current: Option<(File, u64)>,
    pending: Vec<u8>,
}

impl Follower {
    pub fn new(dir: &Path) -> Self {
        Follower {
            dir: dir.to_path_buf(),
            current: None,
            pending: Vec::new(),
        }
    }

    /// Records written since the last call (every kept record on the first).
    pub fn poll(&mut self) -> Result<Vec<Record>> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let path = self.dir.join("container.log");
        let now_ino = fs::metadata(&path).map(|m| m.ino()).ok();
        match &mut self.current {
            None => {
                // First call: the rotated files whole, then the current one.
                for f in files(&self.dir) {
                    if f == path {
                        continue;
                    }
                    let mut data = Vec::new();
                    File::open(&f).and_then(|mut h| h.read_to_end(&mut data)).map_err(|e| io(&f, e))?;
                    self.pending.extend_from_slice(&data);
                    self.take_lines(&mut out, &f)?;
                }
            }
            Some((file, ino)) => {
                let mut data = Vec::new();
                file.read_to_end(&mut data).map_err(|e| io(&path, e))?;
                self.pending.extend_from_slice(&data);
                let old = *ino;
                self.take_lines(&mut out, &path)?;
                // Same file, or the new one not made yet (mid-rotation): go on next time.
                if now_ino.is_none() || now_ino == Some(old) {
                    return Ok(out);
                }
                // Rotated, perhaps more than once since the last poll: every rotated file newer
                // than ours (ours is now `.k`: `.k-1` down to `.1`; all of them if ours is gone)
                // is read whole, oldest first.
                self.pending.clear();
                let rotated: Vec<PathBuf> = files(&self.dir).into_iter().filter(|f| *f != path).collect();
                let ours = rotated.iter().position(|f| fs::metadata(f).map(|m| m.ino()).ok() == Some(old));
                let newer = match ours {
                    Some(k) => &rotated[k + 1..],
                    None => &rotated[..],
                };
                for f in newer {
                    let mut data = Vec::new();
                    File::open(f).and_then(|mut h| h.read_to_end(&mut data)).map_err(|e| io(f, e))?;
                    self.pending.extend_from_slice(&data);
                    self.take_lines(&mut out, f)?;
                    self.pending.clear();
                }
                self.pending.clear();
            }
        }
        self.current = None;
        if let Ok(mut f) = File::open(&path) {
            let ino = f.metadata().map(|m| m.ino()).map_err(|e| io(&path, e))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data).map_err(|e| io(&path, e))?;
            self.pending.extend_from_slice(&data);
            self.take_lines(&mut out, &path)?;
            self.current = Some((f, ino));
        }
        Ok(out)
    }

    /// Parses the complete lines in `pending`, keeping a partial last one.
    fn take_lines(&mut self, out: &mut Vec<Record>, f: &Path) -> Result<()> {
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in self.pending[..end].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).map_err(|e| Error(format!("{}: a record is not valid JSON: {e}", f.display())))?);
        }
        self.pending.drain(..=end);
        Ok(())
    }
}

/// Every record still kept, oldest first.
pub fn read(dir: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for f in files(dir) {
        let file = File::open(&f).map_err(|e| io(&f, e))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| io(&f, e))?;
            if line.is_empty() {
                continue;
            }
            out.push(serde_json::from_str(&line).map_err(|e| Error(format!("{}: a record is not valid JSON: {e}", f.display())))?);
        }
    }
    Ok(out)
}

/// Checks the chain; returns how many records were verified, or what is wrong.
pub fn verify(dir: &Path) -> Result<u64> {
    let files = files(dir);
    let rotated_away = files
        .first()
        .map(|f| f.file_name().is_some_and(|n| n != "container.log"))
        .unwrap_or(false);
    let mut prev: Option<String> = None;
    let mut before_last: Option<String> = None;
    let mut n = 0u64;
    for f in &files {
        let file = File::open(f).map_err(|e| io(f, e))?;
        for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| io(f, e))?;
            if line.is_empty() {
                continue;
            }
            let where_ = format!("{} line {}", f.display(), i + 1);
            let rec: Record = serde_json::from_slice(&line).map_err(|_| Error(format!("log tampered: {where_} is not a valid record")))?;
            let expected = match &prev {
                Some(p) => p.clone(),
                // The oldest kept record: the first ever (genesis), unless older files were rotated away.
                None if rotated_away => rec.prev.clone(),
                None => GENESIS.to_owned(),
            };
            if rec.prev != expected {
                return Err(Error(format!(
                    "log tampered: {where_} does not follow the record before it (edited, removed or reordered)"
                )));
            }
            before_last = prev.replace(hash(&line));
            n += 1;
        }
    }
    let head: Option<Head> = fs::read(dir.join("head")).ok().and_then(|d| serde_json::from_slice(&d).ok());
    match head {
        Some(h) if Some(&h.last) == before_last.as_ref() => Err(Error(format!(
            "log tampered: one record follows the last one the head names ({} records were written): the \
             container's shim was stopped between writing a record and its head, or a record was appended",
            h.records
        ))),
        Some(h) if Some(&h.last) != prev.as_ref() && !(h.records == 0 && prev.is_none()) => Err(Error(format!(
            "log tampered: the last record is not the last one written ({} records were written; records were cut off or replaced)",
            h.records
        ))),
        Some(_) => Ok(n),
        None if n == 0 => Ok(0),
        None => Err(Error("log tampered: its head record is missing".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_lines(dir: &Path, n: usize, max: u64) {
        let mut w = LogWriter::open(dir, max, 3).unwrap();
        for i in 0..n {
            w.write(if i % 2 == 0 { "stdout" } else { "stderr" }, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        w.write("stdout", b"partial").unwrap();
        w.close().unwrap();
    }

    #[test]
    fn a_shim_killed_between_a_record_and_the_head_is_caught_up_on_reopen() {
        let d = tempfile::tempdir().unwrap();
        write_lines(d.path(), 10, 1 << 20);
        // The record the killed shim wrote; its head update never happened.
        let head: Head = serde_json::from_slice(&fs::read(d.path().join("head")).unwrap()).unwrap();
        let rec = Record {
            log: "last words\n".into(),
            stream: "stdout".into(),
            time: "2026-12-06T00:00:00Z".into(),
            prev: head.last.clone(),
        };
        let mut f = OpenOptions::new().append(true).open(d.path().join("container.log")).unwrap();
        f.write_all(&[serde_json::to_vec(&rec).unwrap(), b"\n".to_vec()].concat()).unwrap();
        drop(f);
        let err = verify(d.path()).unwrap_err().0;
        assert!(err.contains("stopped between writing a record and its head"), "{err}");
        // The next shim continues the chain from that record.
        write_lines(d.path(), 3, 1 << 20);
        assert_eq!(verify(d.path()).unwrap(), 16);
        let head: Head = serde_json::from_slice(&fs::read(d.path().join("head")).unwrap()).unwrap();
        assert_eq!(head.records, 16);
        // A record that does not continue the chain is not adopted.
        let mut f = OpenOptions::new().append(true).open(d.path().join("container.log")).unwrap();
        let forged = Record {
            prev: GENESIS.into(),
            ..rec
        };
        f.write_all(&[serde_json::to_vec(&forged).unwrap(), b"\n".to_vec()].concat())
            .unwrap();
        drop(f);
        write_lines(d.path(), 1, 1 << 20);
        assert!(verify(d.path()).unwrap_err().0.contains("does not follow"));
    }

    #[test]
    fn a_record_cut_by_a_crash_is_dropped_and_long_records_are_caught_up() {
        let d = tempfile::tempdir().unwrap();
        // Records of control characters are six times their line.
        let mut w = LogWriter::open(d.path(), 1 << 24, 3).unwrap();
        w.write("stdout", &[1u8; MAX_LINE]).unwrap();
        w.close().unwrap();
        let head: Head = serde_json::from_slice(&fs::read(d.path().join("head")).unwrap()).unwrap();
        let rec = Record {
            log: "\u{1}".repeat(MAX_LINE),
            stream: "stdout".into(),
            time: "2026-12-06T00:00:00Z".into(),
            prev: head.last.clone(),
        };
        let line = serde_json::to_vec(&rec).unwrap();
        assert!(line.len() > 4 * MAX_LINE + 4096);
        let mut f = OpenOptions::new().append(true).open(d.path().join("container.log")).unwrap();
        f.write_all(&[line.clone(), b"\n".to_vec()].concat()).unwrap();
        // ...and the next record was cut off half-way by the crash.
        f.write_all(&line[..100]).unwrap();
        drop(f);
        write_lines(d.path(), 2, 1 << 24);
        assert_eq!(verify(d.path()).unwrap(), 5);
    }

    #[test]
    fn chain_verifies_and_survives_rotation() {
        let d = tempfile::tempdir().unwrap();
        write_lines(d.path(), 200, 4096);
        assert!(d.path().join("container.log.2").exists(), "no rotation happened");
        let recs = read(d.path()).unwrap();
        assert_eq!(recs.last().unwrap().log, "partial");
        assert!(verify(d.path()).unwrap() > 0);
        // Continuing after a restart keeps the chain.
        write_lines(d.path(), 3, 4096);
        verify(d.path()).unwrap();
    }

    /// A follower polled between writes sees every record exactly once, in order, across many
    /// rotations of a full log (three files of 4 KiB), and a verify of the chain still passes
    /// with the head written in place on every record.
    #[test]
    fn a_follower_sees_every_record_once_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), 4096, 3).unwrap();
        let mut f = Follower::new(d.path());
        let mut seen: Vec<String> = f.poll().unwrap().into_iter().map(|r| r.log).collect();
        for i in 0..3000 {
            w.write("stdout", format!("line {i}\n").as_bytes()).unwrap();
            // Poll at uneven moments, sometimes after two rotations (a paused reader).
            if (i <= 1000 && i % 37 == 0) || (i > 1000 && i % 70 == 0) {
                seen.extend(f.poll().unwrap().into_iter().map(|r| r.log));
            }
        }
        seen.extend(f.poll().unwrap().into_iter().map(|r| r.log));
        let want: Vec<String> = (0..3000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(seen.len(), want.len());
        assert_eq!(seen, want);
        assert!(d.path().join("container.log.2").exists(), "the log never filled up");
        verify(d.path()).unwrap();
        w.close().unwrap();
        verify(d.path()).unwrap();
    }

    #[test]
    fn logs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let logs = d.path().join("logs");
        write_lines(&logs, 300, 4096);
        assert_eq!(fs::metadata(&logs).unwrap().permissions().mode() & 0o777, 0o700);
        for f in files(&logs) {
            assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
        }
    }

    #[test]
    fn edits_removals_and_truncation_are_found() {
        for tamper in ["edit", "remove", "truncate", "swap"] {
            let d = tempfile::tempdir().unwrap();
            write_lines(d.path(), 10, DEFAULT_MAX_SIZE);
            let p = d.path().join("container.log");
            let text = fs::read_to_string(&p).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            match tamper {
                "edit" => lines[3] = lines[3].replace("line 3", "line X"),
                "remove" => drop(lines.remove(4)),
                "truncate" => lines.truncate(8),
                _ => lines.swap(2, 5),
            }
            fs::write(&p, lines.join("\n") + "\n").unwrap();
            let err = verify(d.path()).unwrap_err().to_string();
            assert!(err.contains("tampered"), "{tamper}: {err}");
        }
    }
}
