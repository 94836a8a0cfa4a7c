//! Hugging Face Hub ids, fetched into the standard HF cache (the layout Python's
//! `huggingface_hub` uses).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use crate::{read_json, Result, WeightsError};

/// Tokenizer files; `tokenizer.json` is required, the others are fetched when present.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// How to reach the Hub. [`HubOptions::from_env`] reads the variables Python honours.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Branch, tag or commit; overrides an `@revision` in the id. Default `main`.
    pub revision: Option<String>,
    /// Hub cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Access token (`HF_TOKEN`, else the token file in `HF_HOME`).
    pub token: Option<String>,
    /// Use only the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
    /// Hub address (`HF_ENDPOINT`); default `https://huggingface.co`.
    pub endpoint: Option<String>,
}

impl HubOptions {
    /// Options from `HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE` and
    /// `HF_ENDPOINT`, with progress bars on.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            revision: None,
            cache_dir: var("HF_HUB_CACHE").map(PathBuf::from),
            token: var("HF_TOKEN"),
            offline: var("HF_HUB_OFFLINE")
                .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on")),
            progress: true,
            endpoint: var("HF_ENDPOINT"),
        }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }
}

/// A parsed Hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit (`@revision`), if given.
    pub revision: Option<String>,
}

impl HubId {
    /// Parses `org/name` or `org/name@revision`.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        let (org, name) = repo.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (valid(org) && valid(name)).then(|| Self {
            repo: repo.to_string(),
            revision,
        })
    }
}

/// Fetches one file of the repository: its local path, or `None` when the repository has
/// no such file.
type Fetcher = dyn Fn(&str) -> Result<Option<PathBuf>>;

/// Fetches a Hub model's config, tokenizer and weights into the HF cache (offline: finds them
/// there); returns the snapshot folder holding them. `options.revision` overrides the id's;
/// neither given, `main`.
pub fn fetch_model(id: &HubId, options: &HubOptions) -> Result<PathBuf> {
    fetch(id, options, true)
}

pub(crate) fn fetch(id: &HubId, options: &HubOptions, with_weights: bool) -> Result<PathBuf> {
    let revision = options
        .revision
        .clone()
        .or(id.revision.clone())
        .unwrap_or_else(|| "main".into());
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, revision);
    let fetcher: Box<Fetcher> = if options.offline {
        let cached = options.cache().repo(repo);
        Box::new(move |file: &str| Ok(cached.get(file)))
    } else {
        let mut builder = ApiBuilder::from_cache(options.cache());
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder
            .with_progress(options.progress)
            .with_token(options.token.clone().or_else(|| options.cache().token()))
            .build()
            .map_err(|e| hub_error(&id.repo, "config.json", e))?;
        let api_repo = api.repo(repo);
        let repo_name = id.repo.clone();
        Box::new(move |file: &str| match api_repo.get(file) {
            Ok(path) => Ok(Some(path)),
            Err(hf_hub::api::sync::ApiError::RequestError(e))
                if matches!(e.as_ref(), ureq::Error::Status(404, _)) =>
            {
                Ok(None)
            }
            Err(e) => Err(hub_error(&repo_name, file, e)),
        })
    };
    let not_found = |file: &str| {
        if options.offline {
            WeightsError::NotCached {
                repo: id.repo.clone(),
                file: file.to_string(),
                cache: options.cache().path().clone(),
            }
        } else {
            WeightsError::Hub {
                repo: id.repo.clone(),
                file: file.to_string(),
                message: "the repository has no such file".into(),
            }
        }
    };
    // Every file of one revision lands in the same snapshot folder.
    let required = if with_weights {
        "config.json"
    } else {
        "tokenizer.json"
    };
    let folder = fetcher(required)?
        .ok_or_else(|| not_found(required))?
        .parent()
        .map(Path::to_path_buf)
        .expect("a cached file has a folder");
    for file in TOKENIZER_FILES
        .iter()
        .chain(["generation_config.json"].iter())
    {
        if *file != required {
            fetcher(file)?;
        }
    }
    if !with_weights {
        return Ok(folder);
    }
    match fetcher("model.safetensors.index.json")? {
        Some(index_path) => {
            #[derive(Deserialize)]
            struct Index {
                weight_map: std::collections::BTreeMap<String, String>,
            }
            let index: Index =
                serde_json::from_value(read_json(&index_path)?).map_err(|source| {
                    WeightsError::Json {
                        path: index_path.clone(),
                        source,
                    }
                })?;
            let mut shards: Vec<String> = index.weight_map.into_values().collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                fetcher(&shard)?.ok_or_else(|| not_found(&shard))?;
            }
        }
        None => {
            fetcher("model.safetensors")?.ok_or_else(|| not_found("model.safetensors"))?;
        }
    }
    Ok(folder)
}

fn hub_error(repo: &str, file: &str, error: impl std::fmt::Display) -> WeightsError {
    WeightsError::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        message: error.to_string(),
    }
}
