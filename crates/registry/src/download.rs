//! One HTTPS download to a file, with a size limit: what `db update` needs to fetch OSV's
//! ecosystem archives. Plain HTTP is refused; the system's roots decide trust.

use std::io::Write;

use crate::{Error, Result};

/// Download `url` into `out`, refusing more than `max_bytes`. Returns the bytes written.
pub fn download(url: &str, out: &mut std::fs::File, max_bytes: u64, d: &crate::deadline::Deadlines) -> Result<u64> {
    if !url.starts_with("https://") {
        return Err(Error::Config(format!("{url}: only https:// downloads are allowed")));
    }
    crate::runtime()?.block_on(async {
        let client = crate::login::http_client(Vec::new(), d).map_err(|e| Error::Registry(format!("{url}: {e}")))?;
        let fail = |e: reqwest::Error| Error::Registry(format!("{url}: {}", crate::login::error_chain(&e)));
        let mut resp = d.chunk(client.get(url).send(), url).await.map_err(Error::Registry)?.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(Error::Registry(format!("{url}: HTTP {}", resp.status())));
        }
        let mut n = 0u64;
        let mut rate = d.rate();
        while let Some(chunk) = d.chunk(resp.chunk(), url).await.map_err(Error::Registry)?.map_err(fail)? {
            rate.on(chunk.len(), url).map_err(Error::Registry)?;
            n += chunk.len() as u64;
            if n > max_bytes {
                return Err(Error::Registry(format!("{url}: larger than {max_bytes} bytes")));
            }
            out.write_all(&chunk).map_err(|e| Error::Registry(format!("writing {url}: {e}")))?;
        }
        Ok(n)
    })
}
