//! rpm: the SQLite database (`var/lib/rpm/rpmdb.sqlite`, `usr/lib/sysimage/rpm/rpmdb.sqlite`),
//! one header blob per package. The database file (and its write-ahead log, when the layer has
//! one) is copied to a private directory first: SQLite must never write into a layer, and a WAL
//! database can only be read where its log can be replayed. It is opened in defensive mode with
//! schema code untrusted and cell sizes checked, as SQLite advises for files from outside.

use std::collections::BTreeMap;

use rusqlite::{Connection, OpenFlags};

use super::{package, Parsed};
use crate::Ecosystem;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_LICENSE: u32 = 1014;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;
const TAG_DIRINDEXES: u32 = 1116;
const TAG_BASENAMES: u32 = 1117;
const TAG_DIRNAMES: u32 = 1118;
/// No real header has more entries than this or a bigger data store.
const MAX_ENTRIES: usize = 65_536;
const MAX_FILES: usize = 1 << 20;
/// The most bytes of owned paths one header may make.
const MAX_OWNED_BYTES: usize = 64 << 20;
/// The largest string or blob SQLite will make while reading (a generated column could make
/// gigabytes from a few bytes of schema).
const MAX_SQLITE_VALUE: i32 = 64 << 20;
/// The most packages read from one database (Fedora's largest installs have a few thousand).
pub const MAX_RPM_PACKAGES: usize = 100_000;
/// The most SQLite virtual-machine steps one database may take to read (a real `Packages`
/// table of MAX_RPM_PACKAGES rows takes a few million).
pub const MAX_RPM_STEPS: u64 = 200_000_000;

pub fn parse_sqlite(db: &[u8], wal: Option<&[u8]>) -> Result<Parsed, String> {
    if !db.starts_with(b"SQLite format 3\0") {
        return Err("not an SQLite database".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("rpmdb.sqlite");
    std::fs::write(&path, db).map_err(|e| e.to_string())?;
    if let Some(wal) = wal {
        std::fs::write(dir.path().join("rpmdb.sqlite-wal"), wal).map_err(|e| e.to_string())?;
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| e.to_string())?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA trusted_schema = OFF; PRAGMA cell_size_check = ON; PRAGMA query_only = ON;")
        .map_err(|e| e.to_string())?;
    // Only a real table: `Packages` could be a view over an endless recursive query, which
    // defensive mode and an untrusted schema do not stop.
    let kind: Vec<(String, String)> = conn
        .prepare("SELECT type, sql FROM sqlite_master WHERE name = 'Packages' COLLATE NOCASE")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())))?
                .collect()
        })
        .map_err(|e| format!("rpm database: {e}"))?;
    match kind.as_slice() {
        [(t, sql)] if t == "table" && sql.trim_start().to_ascii_uppercase().starts_with("CREATE TABLE") => {
            // Stored columns only: a generated (or hidden) column computes on every read, outside
            // the step budget.
            let hidden: i64 = conn
                .query_row("SELECT count(*) FROM pragma_table_xinfo('Packages') WHERE hidden != 0", [], |r| {
                    r.get(0)
                })
                .map_err(|e| format!("rpm database: {e}"))?;
            if hidden > 0 {
                return Err("rpm database: Packages has generated or hidden columns; not read".into());
            }
        }
        [] => return Err("rpm database: no Packages table".into()),
        [(t, _)] => return Err(format!("rpm database: Packages is a {t}, not a plain table; not read")),
        _ => return Err("rpm database: more than one object named Packages".into()),
    }
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_SQLITE_VALUE)
        .map_err(|e| e.to_string())?;
    // And a budget of work, however the file is shaped.
    let steps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = steps.clone();
    conn.progress_handler(
        10_000,
        Some(move || counter.fetch_add(10_000, std::sync::atomic::Ordering::Relaxed) + 10_000 > MAX_RPM_STEPS),
    )
    .map_err(|e| e.to_string())?;
    let mut st = conn
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| format!("rpm database: {e}"))?;
    let rows = st
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(|e| format!("rpm database: {e}"))?;
    let mut out = Parsed::default();
    let (mut unreadable, mut first_error) = (0usize, None);
    for (i, blob) in rows.enumerate() {
        if i == MAX_RPM_PACKAGES {
            out.incomplete
                .push(format!("rpm database: more than {MAX_RPM_PACKAGES} packages; the rest is not read"));
            break;
        }
        let blob = match blob {
            Ok(b) => b,
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::OperationInterrupted => {
                out.incomplete.push(format!(
                    "rpm database: reading it took more than {MAX_RPM_STEPS} steps; the rest is not read"
                ));
                break;
            }
            Err(e) => return Err(format!("rpm database: {e}")),
        };
        match parse_header(&blob) {
            Ok(Some((p, files))) => {
                out.packages.push(p);
                out.owned.extend(files);
            }
            Ok(None) => {}
            Err(e) => {
                unreadable += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    // One line for all unreadable headers, not one per row of a hostile database.
    // A package whose header cannot be read is a package the scan does not know.
    if let Some(e) = first_error {
        out.incomplete.push(if unreadable == 1 {
            format!("an rpm header: {e}")
        } else {
            format!("{unreadable} rpm headers could not be read (the first: {e})")
        });
    }
    Ok(out)
}

enum Val<'a> {
    Str(&'a str),
    Strs(Vec<&'a str>),
    Ints(Vec<u32>),
}

/// One header as rpm stores it: entry count, data size, the entries, the data.
pub fn parse_header(blob: &[u8]) -> Result<Option<(crate::Package, Vec<String>)>, String> {
    let be = |at: usize| -> Result<u32, String> {
        blob.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
            .ok_or_else(|| "truncated".to_string())
    };
    let (il, dl) = (be(0)? as usize, be(4)? as usize);
    if il > MAX_ENTRIES {
        return Err(format!("{il} entries"));
    }
    let data_start = 8 + il * 16;
    let data = blob
        .get(data_start..data_start.checked_add(dl).ok_or("bad size")?)
        .ok_or("truncated data")?;
    let mut vals: BTreeMap<u32, Val> = BTreeMap::new();
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, ty, off, count) = (be(e)?, be(e + 4)?, be(e + 8)? as usize, be(e + 12)? as usize);
        if !matches!(
            tag,
            TAG_NAME
                | TAG_VERSION
                | TAG_RELEASE
                | TAG_EPOCH
                | TAG_LICENSE
                | TAG_ARCH
                | TAG_SOURCERPM
                | TAG_DIRINDEXES
                | TAG_BASENAMES
                | TAG_DIRNAMES
        ) {
            continue;
        }
        if count > MAX_FILES || off >= data.len() {
            return Err(format!("tag {tag}: bad offset or count"));
        }
        let strings = |n: usize| -> Result<Vec<&str>, String> {
            let mut out = Vec::with_capacity(n.min(4096));
            let mut at = off;
            for _ in 0..n {
                let rest = data.get(at..).ok_or("string past the data")?;
                let end = rest.iter().position(|&b| b == 0).ok_or("unterminated string")?;
                out.push(std::str::from_utf8(&rest[..end]).map_err(|_| "string not UTF-8")?);
                at += end + 1;
            }
            Ok(out)
        };
        let v = match ty {
            // STRING, I18NSTRING (first)
            6 | 9 => Val::Str(strings(1)?[0]),
            8 => Val::Strs(strings(count)?),
            4 => {
                let bytes = data.get(off..off + count * 4).ok_or("integers past the data")?;
                Val::Ints(bytes.chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect())
            }
            _ => continue,
        };
        vals.insert(tag, v);
    }
    let s = |t: u32| match vals.get(&t) {
        Some(Val::Str(s)) => Some(*s),
        _ => None,
    };
    let (Some(name), Some(version)) = (s(TAG_NAME), s(TAG_VERSION)) else {
        return Err("no name or version".into());
    };
    // The keys rpm imports show as packages named gpg-pubkey; they are not software.
    if name == "gpg-pubkey" {
        return Ok(None);
    }
    let epoch = match vals.get(&TAG_EPOCH) {
        Some(Val::Ints(v)) => v.first().copied(),
        _ => None,
    };
    let release = s(TAG_RELEASE);
    let evr = format!(
        "{}{version}{}",
        epoch.map(|e| format!("{e}:")).unwrap_or_default(),
        release.map(|r| format!("-{r}")).unwrap_or_default()
    );
    let mut p = package(name, &evr, Ecosystem::Rpm, "rpm");
    p.arch = s(TAG_ARCH).map(str::to_string);
    p.license = s(TAG_LICENSE).map(str::to_string);
    // "openssl-3.0.7-24.el9.src.rpm" → openssl, 3.0.7-24.el9
    if let Some(src) = s(TAG_SOURCERPM).and_then(|r| r.strip_suffix(".src.rpm").or_else(|| r.strip_suffix(".nosrc.rpm"))) {
        if let Some((rest, rel)) = src.rsplit_once('-') {
            if let Some((n, v)) = rest.rsplit_once('-') {
                p.source_name = Some(n.to_string());
                p.source_version = Some(format!("{}{v}-{rel}", epoch.map(|e| format!("{e}:")).unwrap_or_default()));
            }
        }
    }
    let mut files = Vec::new();
    if let (Some(Val::Strs(base)), Some(Val::Strs(dirs)), Some(Val::Ints(idx))) =
        (vals.get(&TAG_BASENAMES), vals.get(&TAG_DIRNAMES), vals.get(&TAG_DIRINDEXES))
    {
        // Paths are made by joining: a 1 MiB directory name times a million base names would be a
        // terabyte. Bytes and count are capped per header.
        let mut bytes = 0usize;
        for (b, i) in base.iter().zip(idx) {
            if let Some(d) = dirs.get(*i as usize) {
                bytes += d.len() + b.len();
                if bytes > MAX_OWNED_BYTES || files.len() >= MAX_FILES {
                    return Err(format!(
                        "more than {MAX_OWNED_BYTES} bytes or {MAX_FILES} owned paths in one header"
                    ));
                }
                files.push(format!("{d}{b}"));
            }
        }
    }
    Ok(Some((p, files)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_headers_are_errors() {
        assert!(super::parse_header(b"").is_err());
        assert!(super::parse_header(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(super::parse_header(&[0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 3, 232, 0, 0, 0, 6, 0, 0, 0, 9, 0, 0, 0, 1, b'x', 0, 0, 0]).is_err());
        assert!(super::parse_sqlite(b"not sqlite", None).is_err());
    }

    /// A database made by SQLite itself with `schema`, as bytes.
    fn db(schema: &str) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        rusqlite::Connection::open(&p).unwrap().execute_batch(schema).unwrap();
        std::fs::read(&p).unwrap()
    }

    #[test]
    fn a_view_over_an_endless_query_is_not_read() {
        // What a hostile layer shipped: `Packages` as a view over a recursive CTE that never ends.
        let evil = db("CREATE VIEW Packages AS WITH RECURSIVE n(i, blob) AS (SELECT 1, x'00' UNION ALL SELECT i + 1, x'00' FROM n) SELECT blob FROM n;");
        let err = super::parse_sqlite(&evil, None).unwrap_err();
        assert!(err.contains("Packages is a view"), "{err}");
        // A real table (with a trigger the read never fires): read, its headers judged one by one.
        let ok = db("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB NOT NULL); INSERT INTO Packages (blob) VALUES (x'0000');");
        let parsed = super::parse_sqlite(&ok, None).unwrap();
        assert_eq!(parsed.incomplete.len(), 1, "{:?}", parsed.incomplete);
        assert!(super::parse_sqlite(&db("CREATE TABLE Other (x);"), None)
            .unwrap_err()
            .contains("no Packages table"));
    }

    #[test]
    fn a_generated_column_is_not_read() {
        // A plain table whose blob is computed: 400 MB a row from a few bytes of schema.
        let evil = db(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, s, blob AS (CAST(hex(zeroblob(400000000 + s * 0)) AS BLOB)));
                       INSERT INTO Packages (s) VALUES (1);",
        );
        let err = super::parse_sqlite(&evil, None).unwrap_err();
        assert!(err.contains("generated or hidden"), "{err}");
    }

    #[test]
    fn too_many_rows_stop_at_the_cap() {
        let many = db(&format!(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})
             INSERT INTO Packages (blob) SELECT x'00' FROM n;",
            super::MAX_RPM_PACKAGES + 5
        ));
        let parsed = super::parse_sqlite(&many, None).unwrap();
        assert!(
            parsed.incomplete.iter().any(|w| w.contains("more than 100000 packages")),
            "{:?}",
            parsed.incomplete
        );
        assert_eq!(
            parsed.incomplete.len(),
            2,
            "one line for all the unreadable headers: {:?}",
            parsed.incomplete
        );
    }
}
