//! The repository through the admin API: upload content, publish an update, approve it for a
//! group, fetch a published role, propose a new version of an offline role.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ringfence_proto::api::{
    ApprovalRequest, BlobUploaded, PublishOutcome, RoleState, UpdateFile, UpdateManifest, WithdrawalRequest,
};
use ringfence_proto::tuf::ApprovalAction;
use ringfence_proto::{GroupName, RoleName, TargetPath};

use super::pending::SignNow;
use crate::{ServerArgs, client, http, now, output, review};

pub fn upload(server: &ServerArgs, file: &Path, json: bool) -> anyhow::Result<()> {
    let uploaded = upload_file(&client(server)?, file)?;
    if json {
        return output::json(&uploaded);
    }
    println!("uploaded {} ({} bytes) as sha256 {}", file.display(), uploaded.length, uploaded.sha256);
    Ok(())
}

fn upload_file(client: &http::Client, file: &Path) -> anyhow::Result<BlobUploaded> {
    let answer = client.put_file("/api/v1/content", file)?.ok()?;
    Ok(serde_json::from_slice(&answer)?)
}

/// Upload `files`, add them to the manifest and post it.
pub fn publish(server: &ServerArgs, manifest: &Path, files: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let client = client(server)?;
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest)?)?;
    let mut list = Vec::new();
    for file in files {
        let uploaded = upload_file(&client, file)?;
        let name = file.file_name().and_then(|n| n.to_str()).context("file name must be UTF-8")?.to_owned();
        list.push(UpdateFile { name, sha256: uploaded.sha256, length: uploaded.length });
    }
    value
        .as_object_mut()
        .context("the manifest must be a JSON object")?
        .insert("files".into(), serde_json::to_value(list)?);
    let manifest: UpdateManifest = serde_json::from_value(value).context("the manifest does not fit the schema")?;
    let answer = client.send_json("POST", "/api/v1/updates", &manifest)?.ok()?;
    let outcome: PublishOutcome = serde_json::from_slice(&answer)?;
    if json {
        return output::json(&outcome);
    }
    output::published(&outcome);
    Ok(())
}

pub struct Approval {
    pub update: Option<String>,
    pub group: String,
    pub target: Option<String>,
    pub action: String,
    pub deadline: Option<String>,
    pub reason: Option<String>,
    /// `PERCENT@TIME` each.
    pub stages: Vec<String>,
}

/// Approve, and with `--key` review and sign the resulting version at once.
pub fn approve(server: &ServerArgs, approval: Approval, sign: &SignNow, json: bool) -> anyhow::Result<()> {
    let action = ApprovalAction::parse(&approval.action)
        .with_context(|| format!("--action: install, uninstall or decline, not {}", approval.action))?;
    let group = GroupName::parse(&approval.group)?;
    let rollout = if approval.stages.is_empty() {
        None
    } else {
        let stages = approval
            .stages
            .iter()
            .map(|s| {
                let (percent, at) = s.split_once('@').context("--stage: PERCENT@TIME, like 10@2026-12-01T00:00:00Z")?;
                let percent = percent.trim_end_matches('%').parse().context("--stage: a percent from 1 to 100")?;
                Ok(ringfence_proto::tuf::RolloutStage { percent, not_before: at.to_owned() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ringfence_trust::rollout::check(&stages).map_err(|e| anyhow::anyhow!("{e}"))?;
        Some(stages)
    };
    let request = ApprovalRequest {
        group: group.clone(),
        update: approval.update,
        target: approval.target.as_deref().map(TargetPath::parse).transpose()?,
        action,
        deadline: approval.deadline,
        reason: approval.reason,
        rollout,
    };
    let client = client(server)?;
    let answer = client.send_json("POST", "/api/v1/approvals", &request)?.ok()?;
    settled(&client, &group, &answer, sign, json)
}

/// Withdraw, and with `--key` review and sign the resulting version at once.
pub fn withdraw(
    server: &ServerArgs,
    update: Option<String>,
    group: &str,
    target: Option<String>,
    sign: &SignNow,
    json: bool,
) -> anyhow::Result<()> {
    let group = GroupName::parse(group)?;
    let target = target.as_deref().map(TargetPath::parse).transpose()?;
    let request = WithdrawalRequest { group: group.clone(), update, target };
    let client = client(server)?;
    let answer = client.send_json("POST", "/api/v1/withdrawals", &request)?.ok()?;
    settled(&client, &group, &answer, sign, json)
}

/// Print the approval role's state; sign it first when a key was given and it waits.
pub(crate) fn settled(
    client: &http::Client,
    group: &GroupName,
    answer: &[u8],
    sign: &SignNow,
    json: bool,
) -> anyhow::Result<()> {
    let mut state: RoleState = serde_json::from_slice(answer)?;
    if !state.published
        && let Some(signer) = sign.signer()
    {
        let (key, trusted, signer_state, options) = signer.load()?;
        let role = group.approval_role();
        match review::review_and_sign(client, &role, &key, &trusted, &signer_state, options, now())? {
            review::Signed::Signed(signed) => state = signed,
            review::Signed::NotAuthorised(why) => anyhow::bail!("{why}"),
        }
    }
    if json {
        return output::json(&state);
    }
    output::role_state(&state);
    Ok(())
}

pub fn fetch(server: &ServerArgs, role: &str, out: &Path) -> anyhow::Result<()> {
    let role = RoleName::parse(role)?;
    let bytes = client(server)?.get(&format!("/api/v1/metadata/{role}"))?.ok()?;
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}; edit it with `ringfence metadata`, sign it, then propose it", out.display());
    Ok(())
}

pub fn propose(server: &ServerArgs, role: &str, file: &Path, json: bool) -> anyhow::Result<()> {
    let role = RoleName::parse(role)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let answer = client(server)?.send("PUT", &format!("/api/v1/pending/{role}"), &bytes, "application/json")?.ok()?;
    role_state(&answer, json)
}

fn role_state(answer: &[u8], json: bool) -> anyhow::Result<()> {
    let state: RoleState = serde_json::from_slice(answer)?;
    if json {
        return output::json(&state);
    }
    output::role_state(&state);
    Ok(())
}
