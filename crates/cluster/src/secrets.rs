//! Secrets and configs in the replicated store (`secret create|ls|inspect|rm|rotate`, `config
//! create|ls|inspect|rm`): the first part of issue 16's least-privilege secrets.
//!
//! - **A secret exists in clear only in memory**: the store seals it at rest (every log entry and
//!   snapshot), and no call returns its data after creation; `inspect` shows its metadata. A
//!   config is not secret: `config inspect` shows its data, as Docker's does.
//! - **At most 500 KiB**, a name of letters, digits, `_`, `.` and `-` (at most 64, starting with a
//!   letter or digit), at most 1,000 of each kind.
//! - **Versions**: `secret rotate NAME` puts a new version under the same name (moby/moby#29882:
//!   no renaming dance). Every task pins the version it was made with; the services that use the
//!   name roll to the new one, and the leader drops an old version once no task pins it.
//! - **In use**: `secret rm` is refused while a service uses it.
//!
//! Keys: `secrets/<name>` or `configs/<name>` (a [`Record`], no data), and
//! `secretdata/<name>/<version>` or `configdata/<name>/<version>` (the data).

use serde::{Deserialize, Serialize};

use crate::manager::{Error, Manager, Result};
use crate::store::{Check, Op, Request};

/// The largest secret or config (as Docker's).
pub const MAX_SIZE: usize = 500 << 10;
/// How many of each kind a cluster holds.
const MAX_COUNT: usize = 1000;

/// A secret or a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Secret => "secrets/",
            Kind::Config => "configs/",
        }
    }
    fn data_key(self, name: &str, version: u32) -> String {
        match self {
            Kind::Secret => format!("secretdata/{name}/{version}"),
            Kind::Config => format!("configdata/{name}/{version}"),
        }
    }
    pub(crate) fn what(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

/// What the store says of a secret or config (never its data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub id: String,
    pub kind: Kind,
    pub version: u32,
    pub size: usize,
    pub created: i64,
    pub updated: i64,
}

/// Names: a letter or digit, then letters, digits, `_`, `.`, `-`; at most 64.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn check(kind: Kind, name: &str, data: &[u8]) -> Result<()> {
    if !valid_name(name) {
        return Err(Error::Invalid(format!(
            "{} name {name:?}: a letter or digit, then letters, digits, '_', '.', '-' (at most 64)",
            kind.what()
        )));
    }
    if data.is_empty() || data.len() > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "a {} holds 1 byte to 500 KiB (this one: {} bytes)",
            kind.what(),
            data.len()
        )));
    }
    Ok(())
}

impl Manager {
    /// One secret's or config's record.
    pub fn secret(&self, kind: Kind, name: &str) -> Option<Record> {
        self.get(&format!("{}{name}", kind.prefix()))
    }

    /// Every secret's or config's record.
    pub fn secrets(&self, kind: Kind) -> Vec<Record> {
        self.sm
            .scan(kind.prefix())
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// A new secret or config, refused if the name is taken (one conditional write).
    pub async fn create_secret(&self, kind: Kind, name: &str, data: &[u8], now: i64) -> Result<Record> {
        check(kind, name, data)?;
        if self.sm.scan(kind.prefix()).len() >= MAX_COUNT {
            return Err(Error::Invalid(format!("at most {MAX_COUNT} {}s", kind.what())));
        }
        let key = format!("{}{name}", kind.prefix());
        let rec = Record {
            name: name.to_owned(),
            id: crate::manager::new_node_id()?,
            kind,
            version: 1,
            size: data.len(),
            created: now,
            updated: now,
        };
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: None,
                }],
                ops: vec![
                    Op::Put {
                        key,
                        value: serde_json::to_vec(&rec).expect("serialisable"),
                    },
                    Op::Put {
                        key: kind.data_key(name, 1),
                        value: data.to_vec(),
                    },
                ],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!("a {} named {name:?} exists already", kind.what())));
        }
        Ok(rec)
    }

    /// A secret's or config's record as stored (its raw value, for a conditional write), or why
    /// there is none.
    pub(crate) fn existing(&self, kind: Kind, name: &str) -> Result<(String, Vec<u8>, Record)> {
        let key = format!("{}{name}", kind.prefix());
        let raw = self
            .sm
            .get(&key)
            .ok_or_else(|| Error::Invalid(format!("no {} named {name:?}", kind.what())))?;
        let rec = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok((key, raw, rec))
    }

    /// `ops`, applied only if the record at `key` is still `raw`.
    async fn write_unchanged(&self, kind: Kind, name: &str, key: String, raw: Vec<u8>, ops: Vec<Op>) -> Result<()> {
        let r = self
            .write(Request {
                checks: vec![Check::Is { key, value: Some(raw) }],
                ops,
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!("the {} {name:?} changed meanwhile; try again", kind.what())));
        }
        Ok(())
    }

    /// A new version of a secret or config under the same name; the services that use it roll
    /// to it (the old version goes when no task pins it any more).
    pub async fn rotate_secret(&self, kind: Kind, name: &str, data: &[u8], now: i64) -> Result<Record> {
        check(kind, name, data)?;
        let (key, raw, old) = self.existing(kind, name)?;
        let rec = Record {
            version: old.version + 1,
            size: data.len(),
            updated: now,
            ..old.clone()
        };
        let ops = vec![
            Op::Put {
                key: key.clone(),
                value: serde_json::to_vec(&rec).expect("serialisable"),
            },
            Op::Put {
                key: kind.data_key(name, rec.version),
                value: data.to_vec(),
            },
        ];
        self.write_unchanged(kind, name, key, raw, ops).await?;
        for svc in self.users_of(kind, name) {
            let rolled = self
                .change_service(&svc, now, |old| {
                    Ok(crate::services::ServiceRecord {
                        version: old.version + 1,
                        previous: Some(old.spec.clone()),
                        update: Some(crate::services::UpdateState::Updating),
                        next_batch_ms: 0,
                        ..old.clone()
                    })
                })
                .await;
            if let Err(e) = rolled {
                tracing::warn!(service = %svc, error = %e, "rolling a service to a rotated {}", kind.what());
            }
        }
        Ok(rec)
    }

    /// Removes a secret or config and its data; refused while a service uses it.
    pub async fn remove_secret(&self, kind: Kind, name: &str) -> Result<Record> {
        let (key, raw, rec) = self.existing(kind, name)?;
        let users = self.users_of(kind, name);
        if !users.is_empty() {
            return Err(Error::Invalid(format!(
                "{} {name} is in use by service {}: remove it from them first",
                kind.what(),
                users.join(", ")
            )));
        }
        let ops = vec![
            Op::Delete { key: key.clone() },
            Op::Delete {
                key: kind.data_key(name, rec.version),
            },
        ];
        self.write_unchanged(kind, name, key, raw, ops).await?;
        Ok(rec)
    }

    /// A config's data (never a secret's: no call returns one).
    pub fn config_data(&self, name: &str) -> Option<Vec<u8>> {
        let rec = self.secret(Kind::Config, name)?;
        self.sm.get(&Kind::Config.data_key(name, rec.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes() {
        for ok in ["db_password", "a", "A.b-c_9", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "../x", &"x".repeat(65), "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(check(Kind::Secret, "a", &[]).is_err());
        assert!(check(Kind::Secret, "a", &vec![0; MAX_SIZE + 1])
            .unwrap_err()
            .to_string()
            .contains("500 KiB"));
        check(Kind::Secret, "a", &vec![0; MAX_SIZE]).unwrap();
    }
}
