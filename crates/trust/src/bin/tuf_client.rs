//! `bulkhead-tuf-client`: the client side of the TUF conformance suite's CLIENT-CLI protocol,
//! on the same verification code (tough) as `bulkhead pull`:
//!
//! ```text
//! bulkhead-tuf-client --metadata-dir DIR init TRUSTED_ROOT
//! bulkhead-tuf-client --metadata-dir DIR --metadata-url URL refresh
//! bulkhead-tuf-client --metadata-dir DIR --metadata-url URL --target-name NAME \
//!     --target-base-url URL --target-dir DIR download
//! ```
//!
//! Exit status 0 on success, 1 when verification (or anything else) fails, 2 for a bad command.
//! The metadata directory holds the trusted metadata between runs (tough's datastore).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Default)]
struct Args {
    metadata_dir: Option<PathBuf>,
    metadata_url: Option<String>,
    target_name: Option<String>,
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
            "--target-name" => a.target_name = Some(value("--target-name")?),
            "--target-base-url" => a.target_base_url = Some(value("--target-base-url")?),
            "--target-dir" => a.target_dir = Some(value("--target-dir")?.into()),
            _ => a.command.push(arg),
        }
    }
    Ok(a)
}

/// Fetches metadata and targets over HTTP(S); a 404 is "no such file", which TUF's root walk
/// needs to tell from other failures.
#[derive(Clone, Debug)]
struct Http(reqwest::Client);

#[async_trait::async_trait]
impl tough::Transport for Http {
    async fn fetch(&self, url: url::Url) -> Result<tough::TransportStream, tough::TransportError> {
        use tough::{TransportError, TransportErrorKind};
        let resp = self
            .0
            .get(url.clone())
            .send()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND || resp.status() == reqwest::StatusCode::FORBIDDEN {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        if !resp.status().is_success() {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                resp.status().to_string(),
            ));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        Ok(Box::pin(futures_util::stream::once(async move { Ok(body) })))
    }
}

fn dir_url(u: &str) -> Result<url::Url, String> {
    let u = if u.ends_with('/') { u.to_owned() } else { format!("{u}/") };
    url::Url::parse(&u).map_err(|e| format!("{u}: {e}"))
}

async fn load(a: &Args, dir: &std::path::Path) -> Result<tough::Repository, String> {
    let root = std::fs::read(dir.join("root.json")).map_err(|e| format!("{}: {e} (run init first)", dir.join("root.json").display()))?;
    let metadata = dir_url(a.metadata_url.as_deref().ok_or("--metadata-url is required")?)?;
    let targets = match &a.target_base_url {
        Some(t) => dir_url(t)?,
        None => metadata.clone(),
    };
    let client = reqwest::Client::builder().build().map_err(|e| e.to_string())?;
    tough::RepositoryLoader::new(&root, metadata, targets)
        .transport(Http(client))
        .datastore(dir)
        .expiration_enforcement(tough::ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| e.to_string())
}

async fn run(a: Args) -> Result<(), String> {
    let dir = a.metadata_dir.clone().ok_or("--metadata-dir is required")?;
    match a.command.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["init", root] => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::copy(root, dir.join("root.json")).map_err(|e| format!("{root}: {e}"))?;
            Ok(())
        }
        ["refresh"] => load(&a, &dir).await.map(|_| ()),
        ["download"] => {
            let name = a.target_name.clone().ok_or("--target-name is required")?;
            let out = a.target_dir.clone().ok_or("--target-dir is required")?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let repo = load(&a, &dir).await?;
            let name = tough::TargetName::new(name).map_err(|e| e.to_string())?;
            repo.save_target(&name, &out, tough::Prefix::None).await.map_err(|e| e.to_string())
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
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulkhead-tuf-client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-tuf-client: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
