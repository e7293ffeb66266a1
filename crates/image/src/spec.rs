//! Parsing of manifests, indexes and configs from outside, with the checks the OCI types alone do
//! not make: known media types, strict digests, diff_ids that match the layers.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// The annotation that names an image in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and Docker use for the full image name in a layout.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// What a descriptor points at, by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Index,
}

pub fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        _ => None,
    }
}

pub fn is_layer_media_type(m: &str) -> bool {
    matches!(m, OCI_LAYER | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | DOCKER_LAYER_GZIP | DOCKER_LAYER)
}

/// A manifest that passed every check, with its descriptors' digests made strict.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub config_digest: Digest,
    pub layers: Vec<(Descriptor, Digest)>,
    pub raw: ImageManifest,
}

/// Parses an image manifest. `descriptor_media_type` is what the referring descriptor said.
pub fn parse_manifest(data: &[u8], descriptor_media_type: Option<&str>) -> Result<Manifest> {
    let m: ImageManifest = serde_json::from_slice(data).map_err(|e| Error::invalid(format!("malformed manifest: {e}")))?;
    if m.schema_version() != 2 {
        return Err(Error::invalid(format!(
            "manifest schemaVersion {} is not supported (2 is)",
            m.schema_version()
        )));
    }
    let own = m.media_type().as_ref().map(|t| t.to_string());
    let media_type = match (own.as_deref(), descriptor_media_type) {
        (Some(a), Some(b)) if a != b => return Err(Error::invalid(format!("manifest says it is {a} but its descriptor says {b}"))),
        (Some(a), _) => a.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    if kind_of(&media_type) != Some(Kind::Manifest) {
        return Err(Error::invalid(format!("{media_type} is not an image manifest")));
    }
    let cfg_type = m.config().media_type().to_string();
    if cfg_type != OCI_CONFIG && cfg_type != DOCKER_CONFIG {
        return Err(Error::invalid(format!(
            "config media type {cfg_type} is not an image config (an artifact?)"
        )));
    }
    let config_digest = Digest::try_from(m.config().digest())?;
    let mut layers = Vec::new();
    for l in m.layers() {
        let t = l.media_type().to_string();
        if !is_layer_media_type(&t) {
            return Err(Error::invalid(format!(
                "layer media type {t} is not supported (foreign or non-distributable layers are refused)"
            )));
        }
        if l.urls().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::invalid("layers with external URLs are refused"));
        }
        layers.push((l.clone(), Digest::try_from(l.digest())?));
    }
    Ok(Manifest {
        media_type,
        config: m.config().clone(),
        config_digest,
        layers,
        raw: m,
    })
}

/// Parses an image index (or Docker manifest list).
pub fn parse_index(data: &[u8]) -> Result<ImageIndex> {
    let idx: ImageIndex = serde_json::from_slice(data).map_err(|e| Error::invalid(format!("malformed index: {e}")))?;
    if idx.schema_version() != 2 {
        return Err(Error::invalid(format!(
            "index schemaVersion {} is not supported (2 is)",
            idx.schema_version()
        )));
    }
    for d in idx.manifests() {
        Digest::try_from(d.digest())?;
    }
    Ok(idx)
}

/// A config that passed every check.
#[derive(Clone, Debug)]
pub struct Config {
    pub diff_ids: Vec<Digest>,
    pub platform: String,
    pub raw: ImageConfiguration,
    /// The config as plain JSON, for output that keeps fields the typed form does not know.
    pub json: serde_json::Value,
}

/// Parses an image config and checks that it describes `layers` layers.
pub fn parse_config(data: &[u8], layers: usize) -> Result<Config> {
    let raw: ImageConfiguration = serde_json::from_slice(data).map_err(|e| Error::invalid(format!("malformed image config: {e}")))?;
    let json: serde_json::Value = serde_json::from_slice(data).map_err(|e| Error::invalid(format!("malformed image config: {e}")))?;
    if raw.rootfs().typ() != "layers" {
        return Err(Error::invalid(format!(
            "config rootfs type {:?} is not \"layers\"",
            raw.rootfs().typ()
        )));
    }
    let diff_ids = raw
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>())
        .collect::<Result<Vec<_>>>()?;
    if diff_ids.len() != layers {
        return Err(Error::invalid(format!(
            "config lists {} diff_ids for {layers} layers",
            diff_ids.len()
        )));
    }
    let mut platform = format!("{}/{}", raw.os(), raw.architecture());
    if let Some(v) = raw.variant() {
        platform.push('/');
        platform.push_str(v);
    }
    Ok(Config {
        diff_ids,
        platform,
        raw,
        json,
    })
}

/// A platform to select from an index: `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Default for PlatformSpec {
    fn default() -> Self {
        PlatformSpec {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }
}

impl std::str::FromStr for PlatformSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(PlatformSpec {
                os: (*os).into(),
                arch: (*arch).into(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(PlatformSpec {
                os: (*os).into(),
                arch: (*arch).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(Error::invalid(format!(
                "invalid platform {s:?} (expected os/arch[/variant], e.g. linux/amd64)"
            ))),
        }
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl PlatformSpec {
    /// Whether an index entry is for this platform.
    pub fn matches(&self, d: &Descriptor) -> bool {
        let Some(p) = d.platform() else { return false };
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.arch
            && self.variant.as_ref().is_none_or(|v| p.variant().as_deref() == Some(v.as_str()))
    }
}

/// Picks the manifest for `platform` out of an index.
pub fn select_platform<'a>(idx: &'a ImageIndex, platform: &PlatformSpec) -> Result<&'a Descriptor> {
    let mut found = idx
        .manifests()
        .iter()
        .filter(|d| kind_of(d.media_type().as_ref()) == Some(Kind::Manifest) && platform.matches(d));
    found.next().ok_or_else(|| {
        let have: Vec<String> = idx
            .manifests()
            .iter()
            .filter_map(|d| d.platform().as_ref().map(|p| format!("{}/{}", p.os(), p.architecture())))
            .collect();
        Error::NotFound(format!(
            "no image for platform {platform} in the index (it has: {})",
            if have.is_empty() { "none".into() } else { have.join(", ") }
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_mismatched_media_types_and_counts() {
        let cfg = format!(r#"{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{0}","size":2}}"#, "a".repeat(64));
        let layer = format!(
            r#"{{"mediaType":"{OCI_LAYER_GZIP}","digest":"sha256:{0}","size":2}}"#,
            "b".repeat(64)
        );
        let m = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[{layer}]}}"#);
        assert!(parse_manifest(m.as_bytes(), Some(OCI_MANIFEST)).is_ok());
        assert!(parse_manifest(m.as_bytes(), Some(DOCKER_MANIFEST)).is_err());
        let foreign = m.replace(OCI_LAYER_GZIP, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
        assert!(parse_manifest(foreign.as_bytes(), None).is_err());
        let c = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert!(parse_config(c.as_bytes(), 1).is_err());
        assert_eq!(parse_config(c.as_bytes(), 0).unwrap().platform, "linux/amd64");
    }

    #[test]
    fn parses_platforms() {
        assert_eq!("linux/arm64/v8".parse::<PlatformSpec>().unwrap().variant.as_deref(), Some("v8"));
        assert!("linux".parse::<PlatformSpec>().is_err());
        assert!("linux//".parse::<PlatformSpec>().is_err());
    }
}
