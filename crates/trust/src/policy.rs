//! Which references must be signed, and by whom: `<config>/policy.toml` (or `--policy`).
//!
//! ```toml
//! default = "notice"            # unsigned (uncovered) references: "notice" or "deny"
//! forbid_skip_verify = false    # true: --insecure-skip-verify is refused
//!
//! [[trust]]
//! repository = "registry.example/app"   # a repository, or a registry (every repository in it)
//! root_keys = ["<key id>"]             # pinned: the repository's root must be signed by these
//! roles = ["releases"]                 # optional: these roles must each have signed the tag
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What happens to references no rule covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Default_ {
    #[default]
    Notice,
    Deny,
}

/// One covered repository (or registry) and its pinned root keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub repository: String,
    pub root_keys: Vec<String>,
    /// Roles that must have signed a tag (`targets`, or delegated roles such as `releases`); none:
    /// any role the metadata trusts for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default: Default_,
    /// Refuse `--insecure-skip-verify`.
    #[serde(default)]
    pub forbid_skip_verify: bool,
    #[serde(default)]
    pub trust: Vec<Rule>,
    /// What `run` does with what the vulnerability scanner finds.
    #[serde(default, skip_serializing_if = "ScanPolicy::is_default")]
    pub scan: ScanPolicy,
}

/// What `run` does when a vulnerability database is present and the image has findings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// One line on stderr naming what was found; the container runs.
    #[default]
    Warn,
    /// The container does not run.
    Deny,
    /// No scan at run time.
    Off,
}

/// `[scan]` in the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanPolicy {
    #[serde(default)]
    pub gate: Gate,
    /// The lowest severity that counts: critical, high, medium or low.
    #[serde(default = "ScanPolicy::default_fail_on")]
    pub fail_on: String,
    /// What an advisory without any rating counts as.
    #[serde(default = "ScanPolicy::default_fail_on")]
    pub unknown_as: String,
    /// A file of ignore rules (`[[ignore]] id, reason, expires`), as `scan --ignore` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<PathBuf>,
}

impl Default for ScanPolicy {
    fn default() -> Self {
        ScanPolicy {
            gate: Gate::Warn,
            fail_on: Self::default_fail_on(),
            unknown_as: Self::default_fail_on(),
            ignore: None,
        }
    }
}

impl ScanPolicy {
    fn default_fail_on() -> String {
        "high".into()
    }

    fn is_default(&self) -> bool {
        *self == ScanPolicy::default()
    }
}

impl Policy {
    pub fn path(config_dir: &Path) -> PathBuf {
        config_dir.join("policy.toml")
    }

    /// Reads the policy at `path` (missing: nothing covered, notices only).
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(t) => toml::from_str(&t).map_err(|e| Error::Policy(format!("{}: {}", path.display(), e.to_string().replace('\n', " ")))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(e) => Err(Error::Policy(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the policy to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Policy(e.to_string()))?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::Policy(format!("{}: {e}", d.display())))?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::Policy(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::Policy(format!("{}: {e}", path.display())))
    }

    /// The rule covering repository `repo` (`host/path`): the most specific one. Both sides are
    /// compared in their canonical spelling (bulkhead_image::reference::canonical_repository), so
    /// `REGISTRY.EXAMPLE/app`, `registry.example:443/app` and, for Docker Hub, every alias of
    /// `docker.io` are covered by a rule written for any one of them.
    pub fn rule_for(&self, repo: &str) -> Option<&Rule> {
        let repo = canonical(repo);
        self.trust
            .iter()
            .map(|r| (canonical(&r.repository), r))
            .filter(|(c, _)| &repo == c || repo.starts_with(&format!("{c}/")))
            .max_by_key(|(c, _)| c.len())
            .map(|(_, r)| r)
    }

    /// Pins `keys` as the root keys of `repo` (replacing an existing rule for exactly it).
    pub fn pin(&mut self, repo: &str, keys: Vec<String>) {
        let repo = &canonical(repo);
        let roles = self
            .trust
            .iter()
            .find(|r| &canonical(&r.repository) == repo)
            .map(|r| r.roles.clone())
            .unwrap_or_default();
        self.trust.retain(|r| &canonical(&r.repository) != repo);
        self.trust.push(Rule {
            repository: repo.to_owned(),
            root_keys: keys,
            roles,
        });
    }
}

/// `host[:port][/path]` in its canonical spelling.
fn canonical(repo: &str) -> String {
    let (host, path) = repo.split_once('/').unwrap_or((repo, ""));
    bulkhead_image::reference::canonical_repository(host, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_rule_covers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy.toml");
        assert_eq!(Policy::load(&p).unwrap(), Policy::default());
        let mut pol = Policy::default();
        pol.pin("reg:5000", vec!["a".into()]);
        pol.pin("reg:5000/team/app", vec!["b".into()]);
        pol.default = Default_::Deny;
        pol.save(&p).unwrap();
        let pol = Policy::load(&p).unwrap();
        assert_eq!(pol.rule_for("reg:5000/team/app").unwrap().root_keys, vec!["b".to_owned()]);
        assert_eq!(pol.rule_for("reg:5000/other").unwrap().root_keys, vec!["a".to_owned()]);
        assert!(pol.rule_for("reg:50001/x").is_none());
        assert!(pol.rule_for("reg:5000/team/application").unwrap().root_keys == vec!["a".to_owned()]);
        assert_eq!(pol.rule_for("REG:5000/team/app").unwrap().root_keys, vec!["b".to_owned()]);
        let mut hub = Policy::default();
        hub.pin("registry.example/app", vec!["r".into()]);
        hub.pin("docker.io/library/x", vec!["h".into()]);
        for spelling in ["REGISTRY.EXAMPLE/app", "registry.example:443/app", "Registry.Example/app/sub"] {
            assert_eq!(hub.rule_for(spelling).unwrap().root_keys, vec!["r".to_owned()], "{spelling}");
        }
        for spelling in ["registry-1.docker.io/library/x", "index.docker.io/library/x", "docker.io/x"] {
            assert_eq!(hub.rule_for(spelling).unwrap().root_keys, vec!["h".to_owned()], "{spelling}");
        }
        assert!(
            hub.rule_for("registry.example:5000/app").is_none(),
            "another port is another registry"
        );
        std::fs::write(&p, "defualt = \"deny\"\n").unwrap();
        assert!(Policy::load(&p).unwrap_err().to_string().contains("unknown field"));
    }
}
