//! Authorization with a registry, done here rather than by oci-client.
//!
//! oci-client would ping `/v2/` itself, follow whatever challenge that second answer names (after
//! ours had checked a first one: check-then-use), read the token answer whole with no bound, put a
//! token that is not a valid header value through `unwrap` (a panic), and never refresh a token
//! that expires during a long pull (Docker Hub's live 300 s). So the dance is ours, once per
//! registry and repository: one ping under the deadlines, the realm checked ([`realm_allowed`]) and
//! then followed (the same value), the answer read to at most [`MAX_TOKEN_RESPONSE`] bytes, the
//! token checked to be a header value, and fetched again once three quarters of its lifetime
//! have passed. oci-client is handed the result as `RegistryAuth::Bearer`, which it uses as it is
//! without a request of its own.
//!
//! A registry whose challenge is Basic receives the password on every request anyway; for those,
//! oci-client is handed the credentials and makes one ping of its own per repository: nothing
//! more can leak through it than the registry already has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use crate::config::Credentials;
use crate::login::{challenge_params, error_chain, http_client, realm_allowed, MAX_TOKEN_RESPONSE};
use crate::{Error, Registries, Result};

/// What the registry's `/v2/` answered: how it wants to be authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    /// Nothing asked (200, or no challenge): requests go without credentials.
    None,
    /// HTTP Basic, to the registry itself.
    Basic,
    /// A token service.
    Bearer { realm: String, service: Option<String> },
}

/// A token and when to fetch the next.
#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
}

/// How requests to one registry are authorized, shared by the requests of one command.
pub(crate) struct Authorizer<'a> {
    regs: &'a Registries,
    host: String,
    credentials: Credentials,
    http: reqwest::Client,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    challenge: Option<Challenge>,
    tokens: HashMap<(String, bool), Token>,
    /// (repository, push) pairs oci-client was handed Basic credentials for.
    basic: std::collections::HashSet<(String, bool)>,
}

/// What a request of ours (not oci-client's) carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    None,
    Basic(String, String),
    Bearer(String),
}

impl Header {
    pub(crate) fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Header::None => req,
            Header::Basic(u, p) => req.basic_auth(u, Some(p)),
            Header::Bearer(t) => req.bearer_auth(t),
        }
    }
}

impl Registries {
    /// The authorizer for requests to `host`.
    pub(crate) fn authorizer(&self, host: &str) -> Result<Authorizer<'_>> {
        let mut certs = Vec::new();
        for pem in self.ca_certificates(host)? {
            certs.push(reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Config(format!("a CA for {host}: {e}")))?);
        }
        let http = http_client(certs, &self.deadlines()).map_err(|e| Error::Registry(format!("{host}: {}", error_chain(&e))))?;
        Ok(Authorizer {
            regs: self,
            host: host.to_owned(),
            credentials: self.credentials(host)?,
            http,
            state: Default::default(),
        })
    }
}

/// A token must be usable as it is in an `Authorization` header: visible ASCII, no spaces.
fn valid_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Lifetime of a token whose answer says nothing (the token specification's default).
const DEFAULT_TOKEN_SECONDS: u64 = 60;

impl Authorizer<'_> {
    /// The client for requests of ours to this registry (its CAs, the deadlines).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn scheme(&self) -> &'static str {
        if self.regs.is_insecure(&self.host) {
            "http"
        } else {
            "https"
        }
    }

    fn fail(&self, e: &reqwest::Error) -> Error {
        self.regs.describe(
            &self.host,
            &oci_client::errors::OciDistributionError::GenericError(Some(error_chain(e))),
        )
    }

    /// The registry's challenge, asked once.
    async fn challenge(&self, state: &mut State) -> Result<Challenge> {
        if let Some(c) = &state.challenge {
            return Ok(c.clone());
        }
        let d = self.regs.deadlines();
        let url = format!("{}://{}/v2/", self.scheme(), self.host);
        let r = d
            .chunk(self.http.get(&url).send(), &format!("{}: GET /v2/", self.host))
            .await
            .map_err(Error::Registry)?
            .map_err(|e| self.fail(&e))?;
        let headers: Vec<String> = r
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        // The body (if any) is not read: the connection is dropped with the response.
        drop(r);
        let c = parse_challenge(&headers, &self.host)?;
        tracing::debug!(registry = %self.host, challenge = ?c, "registry challenge");
        state.challenge = Some(c.clone());
        Ok(c)
    }

    /// A token for `repository` (`push`: pull and push), from the token service `realm`.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, repository: &str, push: bool) -> Result<Token> {
        let host = &self.host;
        let mut query = vec![(
            "scope",
            format!("repository:{repository}:{}", if push { "pull,push" } else { "pull" }),
        )];
        if let Some(s) = service {
            query.push(("service", s.to_owned()));
        }
        // Checked with or without credentials: an anonymous client still fetches what the realm
        // names and hands the answer back to the registry.
        realm_allowed(self.regs, host, realm)?;
        let mut req = self.http.get(realm);
        if let Credentials::Basic { username, password } = &self.credentials {
            query.push(("account", username.clone()));
            req = req.basic_auth(username, Some(password));
        }
        let d = self.regs.deadlines();
        let what = format!("{host}: the token service {realm}");
        // The whole answer within twice the idle timeout: one that trickles is not waited for.
        let body = tokio::time::timeout(d.idle() * 2, async {
            let mut r = d
                .chunk(req.query(&query).send(), &what)
                .await
                .map_err(Error::Registry)?
                .map_err(|e| self.fail(&e))?;
            let status = r.status();
            if r.content_length().is_some_and(|n| n > MAX_TOKEN_RESPONSE as u64) {
                return Err(Error::Registry(format!(
                    "{what} answered more than {MAX_TOKEN_RESPONSE} bytes; not read"
                )));
            }
            let mut body = Vec::new();
            while let Some(c) = d
                .chunk(r.chunk(), &what)
                .await
                .map_err(Error::Registry)?
                .map_err(|e| self.fail(&e))?
            {
                if body.len() + c.len() > MAX_TOKEN_RESPONSE {
                    return Err(Error::Registry(format!(
                        "{what} answered more than {MAX_TOKEN_RESPONSE} bytes; stopped reading there"
                    )));
                }
                body.extend_from_slice(&c);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                return Err(Error::Registry(format!(
                    "{host}: authentication failed at {realm} ({status}; wrong user name or password, or none given: bulkhead login {host})"
                )));
            }
            if !status.is_success() {
                return Err(Error::Registry(format!("{what} answered {status}")));
            }
            Ok(body)
        })
        .await
        .map_err(|_| Error::Registry(format!("{what} did not answer within {} s", (d.idle() * 2).as_secs())))??;
        let started = Instant::now();
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::Registry(format!("{what} answered something that is not JSON: {e}")))?;
        let value = v
            .get("token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .or_else(|| v.get("access_token").and_then(|t| t.as_str()))
            .ok_or_else(|| Error::Registry(format!("{what} answered without a token")))?;
        if !valid_token(value) {
            return Err(Error::Registry(format!(
                "{what} answered a token with spaces or control characters; refused"
            )));
        }
        let lifetime = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(DEFAULT_TOKEN_SECONDS)
            .clamp(1, 24 * 3600);
        tracing::debug!(registry = %host, repository, push, lifetime, "token fetched");
        Ok(Token {
            value: value.to_owned(),
            refresh_at: started + Duration::from_secs(lifetime) * 3 / 4,
        })
    }

    /// What requests for `oref` with operation `op` carry, fetched or refreshed if need be, and
    /// handed to `client` so that its own requests carry the same.
    pub(crate) async fn authorize(
        &self,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        op: RegistryOperation,
    ) -> Result<Header> {
        let push = matches!(op, RegistryOperation::Push);
        let key = (oref.repository().to_owned(), push);
        let mut state = self.state.lock().await;
        let header = match self.challenge(&mut state).await? {
            Challenge::None => Header::None,
            Challenge::Basic => match &self.credentials {
                Credentials::Anonymous => Header::None,
                Credentials::Basic { username, password } => {
                    tracing::debug!(registry = %self.host, "credentials go to the registry itself (Basic)");
                    if state.basic.insert(key) {
                        let auth = RegistryAuth::Basic(username.clone(), password.clone());
                        tokio::time::timeout(self.regs.deadlines().idle() * 2, client.auth(oref, &auth, op))
                            .await
                            .map_err(|_| Error::Registry(format!("{}: GET /v2/ did not answer", self.host)))?
                            .map_err(|e| self.regs.describe(&self.host, &e))?;
                    }
                    Header::Basic(username.clone(), password.clone())
                }
            },
            Challenge::Bearer { realm, service } => {
                let fresh = state.tokens.get(&key).filter(|t| Instant::now() < t.refresh_at).cloned();
                let token = match fresh {
                    Some(t) => t,
                    None => {
                        let t = self.fetch_token(&realm, service.as_deref(), &key.0, push).await?;
                        state.tokens.insert(key, t.clone());
                        t
                    }
                };
                // A Bearer auth is used by oci-client as it is: no request of its own.
                client
                    .auth(oref, &RegistryAuth::Bearer(token.value.clone()), op)
                    .await
                    .map_err(|e| self.regs.describe(&self.host, &e))?;
                Header::Bearer(token.value)
            }
        };
        Ok(header)
    }
}

/// The challenge the `WWW-Authenticate` headers of a `/v2/` answer make: a Bearer one if any,
/// else Basic, else none. A Bearer challenge without a realm is an error.
fn parse_challenge(headers: &[String], host: &str) -> Result<Challenge> {
    let scheme = |h: &str| h.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
    if let Some(h) = headers.iter().find(|h| scheme(h) == "bearer") {
        let params = challenge_params(h);
        let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| Error::Registry(format!("{host}: a Bearer challenge without a realm")))?;
        return Ok(Challenge::Bearer {
            realm,
            service: get("service"),
        });
    }
    if headers.iter().any(|h| scheme(h) == "basic") {
        return Ok(Challenge::Basic);
    }
    Ok(Challenge::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_tokens() {
        let h = |s: &str| vec![s.to_owned()];
        assert_eq!(parse_challenge(&[], "r").unwrap(), Challenge::None);
        assert_eq!(parse_challenge(&h(r#"Basic realm="x""#), "r").unwrap(), Challenge::Basic);
        assert_eq!(
            parse_challenge(
                &[
                    r#"Basic realm="x""#.to_owned(),
                    r#"Bearer realm="https://a/t",service="s""#.to_owned()
                ],
                "r"
            )
            .unwrap(),
            Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("s".into())
            }
        );
        assert!(parse_challenge(&h(r#"Bearer service="s""#), "r").is_err());
        assert!(valid_token("eyJhbGciOi.x-y_z"));
        for bad in ["", "a b", "a\nb", "a\r\nX-Evil: 1", "é"] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }
}
