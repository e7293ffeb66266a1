//! `bulkhead-tuf-client`: the client side of the TUF conformance suite's CLIENT-CLI protocol,
//! on the same client workflow (bulkhead_trust::client) as `bulkhead pull`:
//!
//! ```text
//! bulkhead-tuf-client --metadata-dir DIR init TRUSTED_ROOT
//! bulkhead-tuf-client --metadata-dir DIR --metadata-url URL refresh
//! bulkhead-tuf-client --metadata-dir DIR --metadata-url URL --target-name NAME \
//!     --target-base-url URL --target-dir DIR download
//! ```
//!
//! Exit status 0 on success, 1 when verification (or anything else) fails, 2 for a bad command.
//! The metadata directory holds the trusted metadata between runs, exactly as verified, and
//! nothing else; `--target-name` may be repeated (processed in order, stopping at the first
//! failure); an artifact already in the target directory with the right length and hashes is not
//! downloaded again.

use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_trust::client::{quote, Fetcher, Updater};

#[derive(Default)]
struct Args {
    metadata_dir: Option<PathBuf>,
    metadata_url: Option<String>,
    target_names: Vec<String>,
    target_base_url: Option<String>,
    target_dir: Option<PathBuf>,
    command: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--metadata-dir" => a.metadata_dir = Some(value("--metadata-dir")?.into()),
            "--metadata-url" => a.metadata_url = Some(value("--metadata-url")?),
            "--target-name" => a.target_names.push(value("--target-name")?),
            "--target-base-url" => a.target_base_url = Some(value("--target-base-url")?),
            "--target-dir" => a.target_dir = Some(value("--target-dir")?.into()),
            _ => a.command.push(arg),
        }
    }
    Ok(a)
}

/// Fetches over HTTP(S) below a base URL, reading at most the stated length; 403 and 404 are "no
/// such file", which the root walk needs to tell from other failures.
struct Http {
    client: reqwest::Client,
    base: String,
    rt: std::rc::Rc<tokio::runtime::Runtime>,
}

impl Http {
    fn new(base: &str, rt: std::rc::Rc<tokio::runtime::Runtime>) -> Result<Self, String> {
        let base = if base.ends_with('/') { base.to_owned() } else { format!("{base}/") };
        // A server that accepts and then says nothing is given up on (a slow-retrieval attack).
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Http { client, base, rt })
    }
}

impl Fetcher for Http {
    fn fetch(&self, name: &str, max: u64) -> bulkhead_trust::Result<Option<Vec<u8>>> {
        let err = |e: String| bulkhead_trust::Error::Metadata(format!("{}{name}: {e}", self.base));
        self.rt.block_on(async {
            let resp = self
                .client
                .get(format!("{}{name}", self.base))
                .send()
                .await
                .map_err(|e| err(e.to_string()))?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(err(status.to_string()));
            }
            if resp.content_length().is_some_and(|l| l > max) {
                return Err(err(format!("larger than {max} bytes")));
            }
            let mut body = Vec::new();
            let mut resp = resp;
            while let Some(chunk) = resp.chunk().await.map_err(|e| err(e.to_string()))? {
                if (body.len() + chunk.len()) as u64 > max {
                    return Err(err(format!("larger than {max} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(body))
        })
    }
}

fn run(a: Args) -> Result<(), String> {
    let dir = a.metadata_dir.clone().ok_or("--metadata-dir is required")?;
    let rt = std::rc::Rc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?,
    );
    let metadata = || -> Result<Http, String> { Http::new(a.metadata_url.as_deref().ok_or("--metadata-url is required")?, rt.clone()) };
    match a.command.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["init", root] => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let data = std::fs::read(root).map_err(|e| format!("{root}: {e}"))?;
            bulkhead_image::store::atomic_write(&dir.join("root.json"), &data).map_err(|e| e.to_string())
        }
        ["refresh"] => {
            let fetch = metadata()?;
            let mut u = Updater::new(&dir, None, &fetch).map_err(|e| e.to_string())?;
            u.refresh().map_err(|e| e.to_string())
        }
        ["download"] => {
            let out = a.target_dir.clone().ok_or("--target-dir is required")?;
            if a.target_names.is_empty() {
                return Err("--target-name is required".into());
            }
            let targets = Http::new(a.target_base_url.as_deref().ok_or("--target-base-url is required")?, rt.clone())?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let fetch = metadata()?;
            let mut u = Updater::new(&dir, None, &fetch).map_err(|e| e.to_string())?;
            for name in &a.target_names {
                let (t, _) = u
                    .target(name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no signed target {name}"))?;
                let file = out.join(quote(&t.path));
                // Already here, and still what the metadata says: not downloaded again.
                if std::fs::read(&file).is_ok_and(|d| t.check(&d).is_ok()) {
                    continue;
                }
                let remote = if u.consistent_snapshot() {
                    let hash = t.hashes.values().next().ok_or("a target without hashes")?;
                    match t.path.rsplit_once('/') {
                        Some((d, b)) => format!("{d}/{hash}.{b}"),
                        None => format!("{hash}.{}", t.path),
                    }
                } else {
                    t.path.clone()
                };
                let data = targets
                    .fetch(&remote, t.length)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("the repository has no {remote}"))?;
                t.check(&data).map_err(|e| e.to_string())?;
                bulkhead_image::store::atomic_write(&file, &data).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        other => Err(format!("unknown command {other:?} (init ROOT | refresh | download)")),
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bulkhead-tuf-client: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-tuf-client: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
