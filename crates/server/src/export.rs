//! `ringfence export --static DIR`: the current repository written as plain files under
//! `DIR/repo/` (the device listener's paths), for a web server, a CDN or an air-gapped mirror.
//! Content and metadata first, `timestamp.json` last, each through a temporary file, so a
//! mirror served while it is written never shows a timestamp before what it names.

use std::path::Path;

use anyhow::Context;

use crate::AppState;

/// What an export wrote.
#[derive(Debug, Clone, Copy)]
pub struct Exported {
    pub metadata: usize,
    pub targets: usize,
}

pub async fn export_static(state: &AppState, dir: &Path) -> anyhow::Result<Exported> {
    let repo = state.repo.static_repository().await?;
    let base = dir.join("repo");
    for (path, sha) in &repo.targets {
        let dest = base.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        state.repo.export_content(sha, &dest, true).await.with_context(|| format!("writing {}", dest.display()))?;
    }
    for (path, bytes) in &repo.metadata {
        let dest = base.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = dest.with_extension("partial");
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(Exported { metadata: repo.metadata.len(), targets: repo.targets.len() })
}
