//! A small blocking client of the node's control API.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// The API endpoint and token.
pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Client {
    /// From explicit values, or the data directory's `api.addr` and `api.token`.
    pub fn new(data_dir: &Path, api: Option<&str>, token: Option<&str>) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let p = data_dir.join(name);
            std::fs::read_to_string(&p).map(|s| s.trim().to_owned()).with_context(|| {
                format!(
                    "cannot read {} (is kosd running with --data-dir {}?)",
                    p.display(),
                    data_dir.display()
                )
            })
        };
        let addr = match api {
            Some(a) => a.to_owned(),
            None => read("api.addr")?,
        };
        let token = match token {
            Some(t) => t.to_owned(),
            None => read("api.token")?,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Ok(Client { base: format!("http://{addr}"), auth: format!("Bearer {token}"), agent })
    }

    fn finish(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut resp = resp.with_context(|| format!("cannot reach the node at {}", self.base))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .context("the node's response could not be read")?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            // The server's own words when it gave them; else the status and the first line.
            match value.as_ref().and_then(|v| v["error"].as_str()) {
                Some(e) => bail!("{e}"),
                None => bail!(
                    "the node answered {status}: {}",
                    text.lines().next().unwrap_or("").chars().take(200).collect::<String>()
                ),
            }
        }
        value.with_context(|| format!("the node answered {status} with a body that is not JSON"))
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call();
        self.finish(r)
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .agent
            .delete(&format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call();
        self.finish(r)
    }

    /// POST `body` to `path`.
    pub fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .send_json(body);
        self.finish(r)
    }
}

/// Prints a response: JSON, or aligned `label  value` lines.
pub fn print(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{v}");
    } else {
        print!("{}", crate::render::generic(v));
    }
    Ok(())
}
