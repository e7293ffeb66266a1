//! The OSV advisory database: one SQLite file beside the store, `vulndb/osv.sqlite3`.
//!
//! Imports run in one transaction (a killed import leaves the previous database as it was) and
//! replace what an earlier import of the same source brought. Advisories are kept whole, indexed by
//! the (ecosystem, package name) pairs they affect, so a scan reads only what its packages need and
//! the whole of OSV (hundreds of thousands of records) costs no more per scan than a small database.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Ecosystem, Error, Result};

/// One OSV record can be large (long `versions` lists) but not larger than this.
pub const MAX_RECORD: u64 = 16 << 20;
const SCHEMA_VERSION: &str = "1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<SeverityEntry>,
    #[serde(default)]
    pub affected: Vec<Affected>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<OsvReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_specific: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Affected {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<OsvPackage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<SeverityEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecosystem_specific: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_specific: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OsvPackage {
    pub ecosystem: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeverityEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub score: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OsvReference {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub url: String,
}

/// Parse one OSV record, refusing what cannot be one.
pub fn parse_advisory(data: &[u8]) -> std::result::Result<Advisory, String> {
    let a: Advisory = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    if a.id.is_empty() || a.id.len() > 200 {
        return Err("no valid id".into());
    }
    Ok(a)
}

/// The key a package name is stored and looked up under in one ecosystem.
pub fn name_key(eco: Ecosystem, name: &str) -> String {
    match eco {
        Ecosystem::PyPI => crate::catalog::python::normalize(name),
        _ => name.to_string(),
    }
}

pub fn default_path(store_root: &Path) -> PathBuf {
    store_root.join("vulndb").join("osv.sqlite3")
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// What `db import` did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub source: String,
    pub imported: usize,
    /// Records of ecosystems nothing here catalogs: kept, but they match nothing.
    pub other_ecosystems: usize,
    pub skipped: Vec<(String, String)>,
}

/// One row of `db status`.
#[derive(Debug, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub path: String,
    pub records: i64,
    pub imported_at: String,
    pub newest_modified: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub path: String,
    pub sources: Vec<SourceStatus>,
    pub ecosystems: BTreeMap<String, i64>,
    pub advisories: i64,
}

impl Db {
    /// Open for reading; None when no database has been imported.
    pub fn open_existing(path: &Path) -> Result<Option<Db>> {
        if !path.exists() {
            return Ok(None);
        }
        // Read-write, then query-only: an import killed mid-way leaves a hot journal that only a
        // writable connection can roll back (the database is then as before that import).
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(db_err(path))?;
        conn.execute_batch("PRAGMA query_only = ON;").map_err(db_err(path))?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        let v: Option<String> = db
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0))
            .optional()
            .map_err(db_err(path))?;
        if v.as_deref() != Some(SCHEMA_VERSION) {
            return Err(Error::Db(format!(
                "{}: schema {:?}, expected {SCHEMA_VERSION}: import again",
                path.display(),
                v
            )));
        }
        Ok(Some(db))
    }

    /// Open for writing, creating the database (0600, in a 0700 directory) if needed.
    pub fn open_rw(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(crate::io_err(dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(crate::io_err(dir.display()))?;
        }
        let conn = Connection::open(path).map_err(db_err(path))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS source (name TEXT PRIMARY KEY, path TEXT NOT NULL, imported_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS advisory (id TEXT PRIMARY KEY, source TEXT NOT NULL, modified TEXT, json TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS advisory_source ON advisory(source);
             CREATE TABLE IF NOT EXISTS affects (ecosystem TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS affects_pkg ON affects(ecosystem, name);
             CREATE INDEX IF NOT EXISTS affects_id ON affects(id);
             INSERT OR REPLACE INTO meta VALUES ('schema', '1');",
        )
        .map_err(db_err(path))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        Ok(Db {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Import OSV records from a directory (searched for `*.json`), a zip archive, or one file,
    /// replacing what an earlier import of `source` brought. All or nothing.
    pub fn import(&mut self, input: &Path, source: &str, progress: &mut dyn FnMut(usize)) -> Result<ImportReport> {
        let mut report = ImportReport {
            source: source.to_string(),
            ..Default::default()
        };
        let mut records = Vec::new();
        let mut take = |name: String, data: std::result::Result<Vec<u8>, String>, report: &mut ImportReport| match data
            .and_then(|d| parse_advisory(&d))
        {
            Ok(a) => records.push(a),
            Err(e) => report.skipped.push((name, e)),
        };
        let is_zip = input.is_file()
            && std::fs::File::open(input)
                .and_then(|mut f| {
                    let mut m = [0u8; 4];
                    f.read_exact(&mut m).map(|_| &m == b"PK\x03\x04")
                })
                .unwrap_or(false);
        if input.is_dir() {
            for entry in walkdir::WalkDir::new(input).follow_links(false).sort_by_file_name() {
                let entry = entry.map_err(|e| Error::Invalid(format!("{}: {e}", input.display())))?;
                if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "json") {
                    take(entry.path().display().to_string(), read_capped(entry.path()), &mut report);
                }
            }
        } else if is_zip {
            let f = std::fs::File::open(input).map_err(crate::io_err(input.display()))?;
            let mut zip =
                crate::zipcheck::open(f).map_err(|e| Error::Invalid(format!("{}: not a readable zip archive: {e}", input.display())))?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| Error::Invalid(format!("{}: {e}", input.display())))?;
                let name = entry.name().to_string();
                if !entry.is_file() || !name.ends_with(".json") {
                    continue;
                }
                let mut buf = Vec::new();
                let data = match (&mut entry).take(MAX_RECORD + 1).read_to_end(&mut buf) {
                    Ok(_) if buf.len() as u64 > MAX_RECORD => Err(format!("larger than {MAX_RECORD} bytes")),
                    Ok(_) => Ok(buf),
                    Err(e) => Err(e.to_string()),
                };
                take(format!("{}:{name}", input.display()), data, &mut report);
            }
        } else if input.is_file() {
            take(input.display().to_string(), read_capped(input), &mut report);
        } else {
            let what = match std::fs::metadata(input) {
                Ok(m) => format!(
                    "{}, not a file or directory",
                    bulkhead_image::tree::describe(rustix::fs::FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&m)))
                ),
                Err(e) => e.to_string(),
            };
            return Err(Error::Invalid(format!("{}: {what}", input.display())));
        }
        if records.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no OSV records found ({} files could not be read)",
                input.display(),
                report.skipped.len()
            )));
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(db_err(&path))?;
        tx.execute(
            "DELETE FROM affects WHERE id IN (SELECT id FROM advisory WHERE source = ?1)",
            [source],
        )
        .map_err(db_err(&path))?;
        tx.execute("DELETE FROM advisory WHERE source = ?1", [source])
            .map_err(db_err(&path))?;
        {
            let mut del = tx.prepare("DELETE FROM affects WHERE id = ?1").map_err(db_err(&path))?;
            let mut adv = tx
                .prepare("INSERT OR REPLACE INTO advisory (id, source, modified, json) VALUES (?1, ?2, ?3, ?4)")
                .map_err(db_err(&path))?;
            let mut aff = tx
                .prepare("INSERT INTO affects (ecosystem, name, id) VALUES (?1, ?2, ?3)")
                .map_err(db_err(&path))?;
            for (n, a) in records.iter().enumerate() {
                let json = serde_json::to_string(a).map_err(|e| Error::Db(e.to_string()))?;
                del.execute([&a.id]).map_err(db_err(&path))?;
                adv.execute(params![a.id, source, a.modified, json]).map_err(db_err(&path))?;
                let mut known = false;
                let mut seen = std::collections::HashSet::new();
                for p in a.affected.iter().filter_map(|x| x.package.as_ref()) {
                    let Some(eco) = Ecosystem::from_osv(&p.ecosystem) else { continue };
                    known = true;
                    let key = (format!("{eco:?}"), name_key(eco, &p.name));
                    if seen.insert(key.clone()) {
                        aff.execute(params![key.0, key.1, a.id]).map_err(db_err(&path))?;
                    }
                }
                if known {
                    report.imported += 1;
                } else {
                    report.other_ecosystems += 1;
                }
                if n % 1000 == 0 {
                    progress(n);
                }
            }
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        tx.execute(
            "INSERT OR REPLACE INTO source (name, path, imported_at) VALUES (?1, ?2, ?3)",
            params![source, input.display().to_string(), now],
        )
        .map_err(db_err(&path))?;
        tx.commit().map_err(db_err(&path))?;
        Ok(report)
    }

    /// SQLite's own consistency check; an empty list when the database is sound.
    pub fn check(&self) -> Result<Vec<String>> {
        let p = &self.path;
        let mut st = self.conn.prepare("PRAGMA quick_check").map_err(db_err(p))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_err(p))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err(p))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    pub fn status(&self) -> Result<Status> {
        let p = &self.path;
        let mut st = self
            .conn
            .prepare(
                "SELECT s.name, s.path, s.imported_at, COUNT(a.id), MAX(a.modified) FROM source s LEFT JOIN advisory a ON a.source = s.name GROUP BY s.name ORDER BY s.name",
            )
            .map_err(db_err(p))?;
        let sources = st
            .query_map([], |r| {
                Ok(SourceStatus {
                    name: r.get(0)?,
                    path: r.get(1)?,
                    imported_at: r.get(2)?,
                    records: r.get(3)?,
                    newest_modified: r.get(4)?,
                })
            })
            .map_err(db_err(p))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err(p))?;
        let mut st = self
            .conn
            .prepare("SELECT ecosystem, COUNT(DISTINCT id) FROM affects GROUP BY ecosystem")
            .map_err(db_err(p))?;
        let ecosystems = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_err(p))?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()
            .map_err(db_err(p))?;
        let advisories = self
            .conn
            .query_row("SELECT COUNT(*) FROM advisory", [], |r| r.get(0))
            .map_err(db_err(p))?;
        Ok(Status {
            path: p.display().to_string(),
            sources,
            ecosystems,
            advisories,
        })
    }

    /// Every advisory that names this package in this ecosystem.
    pub fn advisories_for(&self, eco: Ecosystem, name: &str) -> Result<Vec<Advisory>> {
        let p = &self.path;
        let mut st = self
            .conn
            .prepare_cached("SELECT a.json FROM affects f JOIN advisory a ON a.id = f.id WHERE f.ecosystem = ?1 AND f.name = ?2")
            .map_err(db_err(p))?;
        let rows = st
            .query_map(params![format!("{eco:?}"), name_key(eco, name)], |r| r.get::<_, String>(0))
            .map_err(db_err(p))?;
        let mut out = Vec::new();
        for json in rows {
            let json = json.map_err(db_err(p))?;
            out.push(
                serde_json::from_str(&json)
                    .map_err(|e| Error::Db(format!("{}: a stored record is unreadable ({e}): import again", p.display())))?,
            );
        }
        Ok(out)
    }
}

fn read_capped(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let f = bulkhead_image::tree::open_regular_following(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(MAX_RECORD + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_RECORD {
        return Err(format!("larger than {MAX_RECORD} bytes"));
    }
    Ok(buf)
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| {
        let hint = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => " (remove it and import again)",
            _ => "",
        };
        Error::Db(format!("{}: {e}{hint}", path.display()))
    }
}
