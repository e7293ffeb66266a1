//! Limits that keep a hostile layer from exhausting the disk or memory: a cap on the unpacked size
//! of a layer and on its compression ratio (a "zip bomb" expands a few kilobytes into gigabytes).

use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Unpacking limits, configurable per import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes one layer may expand to (tar stream, uncompressed).
    pub max_layer_bytes: u64,
    /// The largest uncompressed:compressed ratio allowed once `ratio_floor` bytes were produced.
    pub max_ratio: u64,
    /// Below this many uncompressed bytes, the ratio is not checked (small layers of zeros are fine).
    pub ratio_floor: u64,
    /// The largest manifest, index or config we read into memory.
    pub max_json_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 32 << 30,
            max_ratio: 100,
            ratio_floor: 256 << 20,
            max_json_bytes: 4 << 20,
        }
    }
}

/// The error a [`LimitedReader`] reports through `io::Error` when a limit is crossed.
#[derive(Debug)]
pub struct LimitExceeded(pub String);

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

/// Counts the bytes read from the compressed side of a stream.
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> CountingReader<R> {
    pub fn new(inner: R) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            CountingReader {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Sits on the uncompressed side and fails the stream when it grows past the limits.
pub struct LimitedReader<R> {
    inner: R,
    produced: u64,
    compressed: Option<Arc<AtomicU64>>,
    limits: Limits,
}

impl<R: Read> LimitedReader<R> {
    /// `compressed` counts the input of the decompressor, if there is one.
    pub fn new(inner: R, compressed: Option<Arc<AtomicU64>>, limits: Limits) -> Self {
        LimitedReader {
            inner,
            produced: 0,
            compressed,
            limits,
        }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        if self.produced > self.limits.max_layer_bytes {
            return Err(io::Error::other(LimitExceeded(format!(
                "expands to more than {} bytes (the limit; raise it with --max-layer-size)",
                self.limits.max_layer_bytes
            ))));
        }
        if let Some(c) = &self.compressed {
            let c = c.load(Ordering::Relaxed).max(1);
            if self.produced > self.limits.ratio_floor && self.produced / c > self.limits.max_ratio {
                return Err(io::Error::other(LimitExceeded(format!(
                    "compression ratio over {}:1 after {} bytes: refused as a decompression bomb (raise it with --max-compression-ratio)",
                    self.limits.max_ratio, self.produced
                ))));
            }
        }
        Ok(n)
    }
}

/// How a layer blob is compressed, told by its first bytes (media types are often wrong: Docker's
/// archives call uncompressed tars `tar.gzip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for a tar compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => crate::spec::OCI_LAYER,
            Compression::Gzip => crate::spec::OCI_LAYER_GZIP,
            Compression::Zstd => crate::spec::OCI_LAYER_ZSTD,
        }
    }

    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Opens a decompressing, limited reader over a layer blob.
pub fn decompress<'a, R: Read + Send + 'a>(mut blob: R, limits: Limits) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match blob.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    let kind = Compression::detect(&head[..got]);
    let chained = io::Cursor::new(head[..got].to_vec()).chain(blob);
    let (counted, count) = CountingReader::new(chained);
    Ok(match kind {
        Compression::None => Box::new(LimitedReader::new(counted, None, limits)),
        // MultiGzDecoder: concatenated gzip members are one valid stream (pigz, some registries).
        Compression::Gzip => Box::new(LimitedReader::new(
            flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 16, counted)),
            Some(count),
            limits,
        )),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(counted)?;
            // Never let a zstd frame ask for a huge window (memory exhaustion): 128 MiB at most.
            d.window_log_max(27)?;
            Box::new(LimitedReader::new(d, Some(count), limits))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn refuses_a_gzip_bomb() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let gz = enc.finish().unwrap();
        let limits = Limits {
            ratio_floor: 8 << 20,
            ..Limits::default()
        };
        let mut r = decompress(&gz[..], limits).unwrap();
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err}");
    }

    #[test]
    fn refuses_past_the_size_limit_and_passes_below() {
        let data = vec![7u8; 4096];
        let limits = Limits {
            max_layer_bytes: 4095,
            ..Limits::default()
        };
        assert!(io::copy(&mut decompress(&data[..], limits).unwrap(), &mut io::sink()).is_err());
        let limits = Limits {
            max_layer_bytes: 4096,
            ..Limits::default()
        };
        assert_eq!(
            io::copy(&mut decompress(&data[..], limits).unwrap(), &mut io::sink()).unwrap(),
            4096
        );
    }
}
