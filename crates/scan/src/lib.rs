//! # bulkhead-scan
//!
//! What is inside an image, layer by layer, and what in it is vulnerable. Offline: nothing here
//! opens a network connection (`db update` in the CLI is the one thing that downloads).
//!
//! 1. [`walk::catalog_image`] walks the unpacked layers of an image bottom-up, as overlayfs would
//!    stack them (whiteouts and opaque directories delete what lies below), hands every file a
//!    cataloger recognises to it, and keeps for each package the first layer from the base in which
//!    it appeared with the same version and still appears in every layer above.
//! 2. [`catalog`] holds the catalogers: dpkg, apk, Python, npm, and ELF binaries (Go build info,
//!    cargo-auditable dependency lists, version strings of OpenSSL, BusyBox, Python and Node).
//! 3. [`db`] is the OSV advisory database (SQLite), [`matcher`] matches a bill of materials against it
//!    with each ecosystem's own version order ([`version`]), [`severity`] rates what it finds.
//! 4. [`format`] writes CycloneDX 1.6, SPDX 2.3, SARIF 2.1 and our own JSON.

pub mod catalog;
pub mod db;
pub mod format;
pub mod ignore;
pub mod matcher;
pub mod purl;
pub mod severity;
pub mod version;
pub mod walk;
pub mod zipcheck;

use serde::{Deserialize, Serialize};

/// Where a package came from, which decides how its versions compare and which advisories apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Ecosystem {
    Debian,
    Ubuntu,
    Alpine,
    Rpm,
    PyPI,
    Npm,
    Go,
    CratesIo,
    Maven,
    /// Found by its version string in a binary no package manager installed.
    Binary,
}

impl Ecosystem {
    /// The ecosystem's name in OSV records (the part before any `:release`).
    pub fn osv_name(self) -> &'static str {
        match self {
            Ecosystem::Debian => "Debian",
            Ecosystem::Ubuntu => "Ubuntu",
            Ecosystem::Alpine => "Alpine",
            Ecosystem::Rpm => "Red Hat",
            Ecosystem::PyPI => "PyPI",
            Ecosystem::Npm => "npm",
            Ecosystem::Go => "Go",
            Ecosystem::CratesIo => "crates.io",
            Ecosystem::Maven => "Maven",
            Ecosystem::Binary => "binary",
        }
    }

    /// The ecosystems OSV names, mapped to ours; None for ecosystems nothing here catalogs.
    pub fn from_osv(name: &str) -> Option<Ecosystem> {
        let base = name.split(':').next().unwrap_or(name);
        Some(match base {
            "Debian" => Ecosystem::Debian,
            "Ubuntu" => Ecosystem::Ubuntu,
            "Alpine" => Ecosystem::Alpine,
            "Red Hat" | "Rocky Linux" | "AlmaLinux" | "openSUSE" | "SUSE" | "Mageia" => Ecosystem::Rpm,
            "PyPI" => Ecosystem::PyPI,
            "npm" => Ecosystem::Npm,
            "Go" => Ecosystem::Go,
            "crates.io" => Ecosystem::CratesIo,
            "Maven" => Ecosystem::Maven,
            _ => return None,
        })
    }

    /// Whether this ecosystem belongs to the operating system (its packages own files).
    pub fn is_os(self) -> bool {
        matches!(self, Ecosystem::Debian | Ecosystem::Ubuntu | Ecosystem::Alpine | Ecosystem::Rpm)
    }
}

impl std::fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ecosystem::Rpm => "rpm",
            Ecosystem::Debian => "deb",
            Ecosystem::Ubuntu => "deb",
            Ecosystem::Alpine => "apk",
            e => e.osv_name(),
        })
    }
}

/// One package found in an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub ecosystem: Ecosystem,
    /// For distribution packages: the source package (Debian) or origin (Alpine) and its version,
    /// which is what distribution advisories name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The cataloger that found it: `dpkg`, `apk`, `python`, `npm`, `go-binary`, ...
    pub found_by: String,
    /// The file that proves it, absolute in the image.
    pub path: String,
    /// 1-based index of the layer that introduced it, bottom first.
    pub layer: usize,
    /// That layer's diff_id.
    pub layer_digest: String,
    /// Package URL (purl).
    pub purl: String,
}

impl Package {
    /// What identifies a package across layers: same cataloger, name and version.
    fn same(&self, other: &Package) -> bool {
        self.found_by == other.found_by && self.name == other.name && self.version == other.version && self.ecosystem == other.ecosystem
    }
}

/// The operating system of an image, from its os-release file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distro {
    /// `ID` (debian, ubuntu, alpine, rhel, ...).
    pub id: String,
    /// `VERSION_ID` (12, 22.04, 3.19.1, ...).
    pub version_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
}

impl Distro {
    /// The name OSV gives this distribution's ecosystem (`Debian`, `Rocky Linux`, ...).
    pub fn osv_ecosystem(&self) -> Option<&'static str> {
        Some(match self.id.as_str() {
            "debian" => "Debian",
            "ubuntu" => "Ubuntu",
            "alpine" => "Alpine",
            "rhel" => "Red Hat",
            "rocky" => "Rocky Linux",
            "almalinux" => "AlmaLinux",
            "opensuse-leap" | "opensuse-tumbleweed" | "opensuse" => "openSUSE",
            "sles" => "SUSE",
            "mageia" => "Mageia",
            _ => return None,
        })
    }

    /// The release as OSV names it in `Debian:12`, `Alpine:v3.19`, `Ubuntu:22.04`, `Rocky Linux:9`.
    pub fn osv_release(&self) -> Option<String> {
        match self.id.as_str() {
            "debian" | "rhel" | "rocky" | "almalinux" => Some(self.version_id.split('.').next()?.to_string()),
            "alpine" => {
                let mut it = self.version_id.split('.');
                Some(format!("v{}.{}", it.next()?, it.next()?))
            }
            "" => None,
            _ => Some(self.version_id.clone()),
        }
    }
}

/// One layer as the bill of materials names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub index: usize,
    pub diff_id: String,
    pub blob: String,
    /// The history line that made it, when the config records one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// What a cataloger could not read, and why: reported, never fatal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub path: String,
    pub layer: usize,
    pub message: String,
    /// Something was left unread for a limit, so packages may be missing from the bill.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// The bill of materials of one image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bom {
    /// The image as the user named it.
    pub image: String,
    pub manifest: String,
    pub config: String,
    pub platform: String,
    pub distro: Option<Distro>,
    pub layers: Vec<LayerInfo>,
    pub packages: Vec<Package>,
    pub warnings: Vec<Warning>,
}

/// Everything that can stop a scan (what only stops one cataloger is a [`Warning`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Image(#[from] bulkhead_image::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("vulnerability database: {0}")]
    Db(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        path: path.to_string(),
        source,
    }
}
