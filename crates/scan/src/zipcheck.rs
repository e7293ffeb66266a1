//! A check of a zip archive's end records before the zip crate reads it.
//!
//! zip 7 looks for the end-of-central-directory record backwards through the whole file, and for
//! every candidate it finds it reads the whole central directory; when that fails it tries the
//! next candidate. A 3 MB jar with 65,000 central-directory entries followed by 800 fake end
//! records cost 13 s (a 20 MB one: hours), and the same reader opens nested jars and OSV archives.
//! The format puts the end record in the last 65,557 bytes (22 bytes and a comment of at most
//! 65,535): here the last record there must be the one, consistent with the file, naming at most
//! [`MAX_ZIP_ENTRIES`] entries, with the central directory's first header where it says — so the
//! zip crate's first candidate is the right one and it never backtracks.

use std::io::{Read, Seek, SeekFrom};

/// The most entries an archive may have (the largest real jars have a few tens of thousands).
pub const MAX_ZIP_ENTRIES: u64 = 200_000;
/// The largest central directory read.
pub const MAX_CD_BYTES: u64 = 64 << 20;

const EOCD: [u8; 4] = *b"PK\x05\x06";
const CDFH: [u8; 4] = *b"PK\x01\x02";
const LOCATOR64: [u8; 4] = *b"PK\x06\x07";
const EOCD64: [u8; 4] = *b"PK\x06\x06";

/// Checks the archive ([`check`]), then opens it with the zip crate under a read budget: the
/// central directory and the end records, once, and a little more. Whatever the check cannot
/// foresee of the zip crate's search (a field it reads that the check does not), the crate cannot
/// read the directory twice. The budget is lifted once the archive is open.
pub fn open<R: Read + Seek>(mut r: R) -> Result<zip::ZipArchive<Budget<R>>, String> {
    let cd_size = check(&mut r)?;
    let left = std::rc::Rc::new(std::cell::Cell::new(cd_size.saturating_add(1 << 20)));
    let zip = zip::ZipArchive::new(Budget {
        inner: r,
        left: left.clone(),
    })
    .map_err(|e| e.to_string())?;
    left.set(u64::MAX);
    Ok(zip)
}

/// A reader that fails once it has given out its budget of bytes.
pub struct Budget<R> {
    inner: R,
    left: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(std::io::Error::other("read more of the archive than its central directory holds"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

impl<R: Seek> Seek for Budget<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Ok (with the central directory's size) if the archive's end records are what the zip crate
/// will take at the first try.
pub fn check<R: Read + Seek>(r: &mut R) -> Result<u64, String> {
    let len = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    if len < 22 {
        return Err("too short to be a zip archive".into());
    }
    let window = len.min(22 + 65_535);
    let start = len - window;
    let mut tail = vec![0u8; window as usize];
    r.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    r.read_exact(&mut tail).map_err(|e| e.to_string())?;
    let at = tail
        .windows(4)
        .rposition(|w| w == EOCD)
        .ok_or("no end-of-central-directory record in the last 64 KiB")?;
    let eocd = &tail[at..];
    if eocd.len() < 22 {
        return Err("a truncated end-of-central-directory record".into());
    }
    let u16_at = |b: &[u8], i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let u32_at = |b: &[u8], i: usize| u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let eocd_pos = start + at as u64;
    let comment = u16_at(eocd, 20);
    if eocd_pos + 22 + comment > len {
        return Err("the end record's comment runs past the end of the file".into());
    }
    // One disk, and the same count on it as in all: the zip crate reads the one, we the other.
    if u16_at(eocd, 4) != 0 || u16_at(eocd, 6) != 0 || u16_at(eocd, 8) != u16_at(eocd, 10) {
        return Err("a multi-disk end record, or one whose entry counts disagree".into());
    }
    let (mut entries, mut cd_size, mut cd_offset) = (u16_at(eocd, 10), u32_at(eocd, 12), u32_at(eocd, 16));
    let mut cd_end = eocd_pos;
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // zip64: the locator just before the end record points at the zip64 end record.
        let loc_pos = eocd_pos.checked_sub(20).ok_or("a zip64 archive without its locator")?;
        let mut loc = [0u8; 20];
        r.seek(SeekFrom::Start(loc_pos)).map_err(|e| e.to_string())?;
        r.read_exact(&mut loc).map_err(|e| e.to_string())?;
        if loc[..4] != LOCATOR64 {
            return Err("a zip64 archive without its locator".into());
        }
        let e64_pos = u64_at(&loc, 8);
        if e64_pos >= loc_pos {
            return Err("the zip64 end record is not before its locator".into());
        }
        let mut e64 = [0u8; 56];
        r.seek(SeekFrom::Start(e64_pos)).map_err(|e| e.to_string())?;
        r.read_exact(&mut e64).map_err(|e| e.to_string())?;
        if e64[..4] != EOCD64 {
            return Err("no zip64 end record where the locator says".into());
        }
        (entries, cd_size, cd_offset) = (u64_at(&e64, 32), u64_at(&e64, 40), u64_at(&e64, 48));
        cd_end = e64_pos;
    }
    if entries > MAX_ZIP_ENTRIES {
        return Err(format!("{entries} entries, more than the {MAX_ZIP_ENTRIES} an archive may have"));
    }
    if entries == 0 {
        return Ok(0);
    }
    // The central directory ends where the end records begin; with junk prepended (a
    // self-extracting jar), everything is shifted by the same amount.
    let cd_start = cd_end.checked_sub(cd_size).ok_or("the central directory is larger than the file")?;
    if cd_offset > cd_start {
        return Err("the central directory is not where its end record says".into());
    }
    if cd_size < entries.saturating_mul(46) {
        return Err(format!("{entries} entries cannot fit in a central directory of {cd_size} bytes"));
    }
    if cd_size > MAX_CD_BYTES {
        return Err(format!("a central directory of {cd_size} bytes, more than {MAX_CD_BYTES}"));
    }
    // Exactly `entries` headers, back to back, filling the directory: one linear pass.
    let mut cd = vec![0u8; cd_size as usize];
    r.seek(SeekFrom::Start(cd_start)).map_err(|e| e.to_string())?;
    r.read_exact(&mut cd).map_err(|e| e.to_string())?;
    let mut pos = 0usize;
    for i in 0..entries {
        let h = cd
            .get(pos..pos + 46)
            .ok_or_else(|| format!("central directory entry {i} runs past its end"))?;
        if h[..4] != CDFH {
            return Err(format!("no central directory header for entry {i} where the end record says"));
        }
        pos += 46 + (u16_at(h, 28) + u16_at(h, 30) + u16_at(h, 32)) as usize;
    }
    if pos != cd.len() {
        return Err("the central directory holds more than its entries".into());
    }
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(cd_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn archive(entries: usize) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..entries {
            w.start_file(format!("f{i}"), zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(b"x").unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn real_archives_pass_and_forged_end_records_do_not() {
        let good = archive(3);
        check(&mut Cursor::new(&good)).unwrap();
        assert!(zip::ZipArchive::new(Cursor::new(&good)).is_ok());
        // Empty end records after the real one: the last says "no entries", which is what the
        // zip crate takes at once too (no backtracking).
        let mut empty = good.clone();
        for _ in 0..800 {
            empty.extend_from_slice(&EOCD);
            empty.extend_from_slice(&[0u8; 18]);
        }
        check(&mut Cursor::new(&empty)).unwrap();
        assert_eq!(zip::ZipArchive::new(Cursor::new(&empty)).unwrap().len(), 0);
        // One naming more entries than fit, and one naming too many.
        let mut lying = good.clone();
        let at = lying.windows(4).rposition(|w| w == EOCD).unwrap();
        lying[at + 10..at + 12].copy_from_slice(&500u16.to_le_bytes());
        assert!(check(&mut Cursor::new(&lying)).is_err());
        // The counts the zip crate and the check read must agree (total 0, on this disk 1).
        let mut split = empty.clone();
        let n = split.len();
        split[n - 22 + 8..n - 22 + 10].copy_from_slice(&1u16.to_le_bytes());
        assert!(check(&mut Cursor::new(&split)).unwrap_err().contains("disagree"));
        // And the archive opens, under its budget, with every entry readable afterwards.
        let mut z = open(Cursor::new(&good)).unwrap();
        assert_eq!(z.len(), 3);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut z.by_index(2).unwrap(), &mut s).unwrap();
        assert_eq!(s, "x");
        assert!(check(&mut Cursor::new(b"PK\x05\x06short")).is_err());
        assert!(check(&mut Cursor::new(b"no zip here at all, just text...")).is_err());
    }

    #[test]
    fn end_records_repeated_after_the_real_one_are_refused() {
        // 20,000 entries, then 300 copies of an end record that names them all, each followed by
        // junk: every copy but the last is a candidate the zip crate would read the whole
        // directory for. The check looks at the last one only, and refuses it.
        let good = archive(20_000);
        let eocd_at = good.windows(4).rposition(|w| w == EOCD).unwrap();
        let record = good[eocd_at..eocd_at + 22].to_vec();
        let mut forged = good.clone();
        for _ in 0..300 {
            forged.extend_from_slice(&record);
            forged.extend_from_slice(b"junk");
        }
        let err = check(&mut Cursor::new(&forged)).unwrap_err();
        assert!(err.contains("central directory"), "{err}");
    }
}
