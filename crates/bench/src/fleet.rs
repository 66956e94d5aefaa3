//! The simulated fleet: device keys derived from a run seed, pre-authorised in bulk through the
//! admin API, sessions opened through the device API, and what each device does in a phase.

use std::sync::OnceLock;

use ringfence_proto::GroupName;
use ringfence_proto::device::{
    ChallengeRequest, ChallengeResponse, CheckinRequest, CheckinResponse, Inventory, MAX_PREAUTHORIZE,
    PreauthorizeBatch, PreauthorizeRequest, PreauthorizedDevices, ReportBatch, ReportState, SessionRequest,
    SessionResponse, StatusReport, report_batch_message, session_message,
};
use ringfence_trust::SigningKey;

use crate::load::{Outcome, error_kind};

/// One simulated device.
pub struct Device {
    pub key: SigningKey,
    pub id: String,
    /// Its session, once opened.
    pub session: OnceLock<String>,
}

/// Device `index`'s key in run `seed`: the same on every run with that seed.
pub fn device_key(seed: u64, index: u64) -> SigningKey {
    let mut bytes = [0u8; 32];
    let source = seed.to_le_bytes().into_iter().chain(index.to_le_bytes()).chain(*b"ringfence-bench-device-1");
    for (b, s) in bytes.iter_mut().zip(source) {
        *b = s;
    }
    SigningKey::from_seed(bytes)
}

/// `count` keys of run `seed`, computed on every core.
pub fn keys(seed: u64, count: u64) -> Vec<SigningKey> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per = count.div_ceil(threads.max(1));
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t * per..((t + 1) * per).min(count)).map(|i| device_key(seed, i)).collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap_or_default()).collect::<Vec<SigningKey>>()
    })
}

/// Pre-authorise `keys` into `group` through `POST /api/v1/devices/preauthorize`, the most a
/// request takes at a time; the devices in the order of `keys`.
pub fn preauthorize(
    agent: &ureq::Agent,
    admin_url: &str,
    token: &str,
    group: &GroupName,
    keys: Vec<SigningKey>,
) -> anyhow::Result<Vec<Device>> {
    let mut devices = Vec::with_capacity(keys.len());
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let chunk: Vec<SigningKey> = keys.by_ref().take(MAX_PREAUTHORIZE).collect();
        let batch = PreauthorizeBatch {
            devices: chunk
                .iter()
                .map(|k| PreauthorizeRequest { public_key: public_hex(k), groups: vec![group.clone()] })
                .collect(),
        };
        let mut answer = agent
            .post(format!("{admin_url}/api/v1/devices/preauthorize"))
            .header("authorization", format!("Bearer {token}"))
            .send_json(&batch)?;
        let body = answer.body_mut().with_config().limit(4 << 20).read_to_vec()?;
        anyhow::ensure!(
            answer.status() == 201,
            "pre-authorising devices: the server answered {}: {}",
            answer.status(),
            String::from_utf8_lossy(&body)
        );
        let stored: PreauthorizedDevices = serde_json::from_slice(&body)?;
        anyhow::ensure!(stored.devices.len() == chunk.len(), "the server stored another number of devices");
        for (key, d) in chunk.into_iter().zip(stored.devices) {
            devices.push(Device { key, id: d.id, session: OnceLock::new() });
        }
    }
    Ok(devices)
}

fn public_hex(key: &SigningKey) -> String {
    key.public().to_tuf().keyval.public
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// POST a JSON body; the answer's body when the status is `expect`.
fn post(agent: &ureq::Agent, url: &str, token: Option<&str>, body: &[u8], expect: u16) -> Result<Vec<u8>, String> {
    let mut request = agent.post(url).header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let mut answer = request.send(body).map_err(|e| error_kind(&e))?;
    let status = answer.status().as_u16();
    let body = answer.body_mut().with_config().limit(1 << 20).read_to_vec().map_err(|e| error_kind(&e))?;
    if status != expect {
        return Err(format!("http {status}"));
    }
    Ok(body)
}

/// GET with the device's session (the repository is for devices only once one is accepted,
/// `repository.access = "devices"`); the body's length when the status is `expect`.
fn get(agent: &ureq::Agent, url: &str, token: &str, range: Option<&str>, expect: u16) -> Result<u64, String> {
    let mut request = agent.get(url).header("authorization", format!("Bearer {token}"));
    if let Some(r) = range {
        request = request.header("range", r);
    }
    let answer = request.call().map_err(|e| error_kind(&e))?;
    let status = answer.status().as_u16();
    let mut reader = answer.into_body().into_reader();
    let bytes = std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| format!("io {:?}", e.kind()))?;
    if status != expect {
        return Err(format!("http {status}"));
    }
    Ok(bytes)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|_| "unexpected answer".to_owned())
}

/// Open a session for `device` (a challenge, then the signed answer): the request bytes.
pub fn open_session(agent: &ureq::Agent, device_url: &str, device: &Device) -> Outcome {
    let request = serde_json::to_vec(&ChallengeRequest { device_id: device.id.clone() }).map_err(|e| e.to_string())?;
    let body = post(agent, &format!("{device_url}/device/v1/challenge"), None, &request, 200)?;
    let challenge: ChallengeResponse = parse(&body)?;
    let signature = hex(&device.key.sign(&session_message(&device.id, &challenge.nonce)));
    let request = SessionRequest { device_id: device.id.clone(), nonce: challenge.nonce, signature };
    let request = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let body = post(agent, &format!("{device_url}/device/v1/session"), None, &request, 200)?;
    let session: SessionResponse = parse(&body)?;
    let _ = device.session.set(session.token);
    Ok(0)
}

fn inventory(index: u64) -> Inventory {
    Inventory {
        hostname: format!("sim-{index}"),
        os: "linux".into(),
        os_version: "12".into(),
        architecture: "x86_64".into(),
        agent_version: "ringfence-bench".into(),
        installed: vec![],
    }
}

/// A check-in claiming `timestamp_version`; the server's answer.
pub fn check_in(
    agent: &ureq::Agent,
    device_url: &str,
    device: &Device,
    index: u64,
    timestamp_version: u64,
) -> Result<CheckinResponse, String> {
    let token = device.session.get().ok_or("no session")?;
    let request = CheckinRequest { inventory: inventory(index), timestamp_version };
    let request = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    parse(&post(agent, &format!("{device_url}/device/v1/checkin"), Some(token), &request, 200)?)
}

/// A check-in that learns of a newer timestamp, then the refresh an agent starts with: the
/// timestamp, and the snapshot it names.
pub fn refresh(agent: &ureq::Agent, device_url: &str, device: &Device, index: u64, current: u64) -> Outcome {
    let answer = check_in(agent, device_url, device, index, current.saturating_sub(1))?;
    if !answer.changed {
        return Err("no change announced".into());
    }
    let token = device.session.get().ok_or("no session")?;
    let request = agent.get(format!("{device_url}/repo/metadata/timestamp.json"));
    let mut timestamp =
        request.header("authorization", format!("Bearer {token}")).call().map_err(|e| error_kind(&e))?;
    if timestamp.status() != 200 {
        return Err(format!("http {}", timestamp.status().as_u16()));
    }
    let body = timestamp.body_mut().with_config().limit(1 << 20).read_to_vec().map_err(|e| error_kind(&e))?;
    let value: serde_json::Value = parse(&body)?;
    let snapshot = value
        .get("signed")
        .and_then(|s| s.get("meta"))
        .and_then(|m| m.get("snapshot.json"))
        .and_then(|s| s.get("version"))
        .and_then(serde_json::Value::as_u64)
        .ok_or("unexpected answer")?;
    let bytes = get(agent, &format!("{device_url}/repo/metadata/{snapshot}.snapshot.json"), token, None, 200)?;
    Ok(body.len() as u64 + bytes)
}

/// A batch of `size` reports, each a new transition, signed by the device's key.
pub fn report(
    agent: &ureq::Agent,
    device_url: &str,
    device: &Device,
    k: u64,
    size: usize,
    target: &str,
    now: i64,
) -> Outcome {
    let token = device.session.get().ok_or("no session")?;
    let reports: Vec<StatusReport> = (0..size)
        .map(|j| StatusReport {
            id: format!("sim-{k}-{j}"),
            target: target.to_owned(),
            state: if j % 2 == 0 { ReportState::Downloaded } else { ReportState::Installed },
            reason: None,
            exit_code: Some(0),
            at: now,
        })
        .collect();
    let signature = hex(&device.key.sign(&report_batch_message(&device.id, &reports)));
    let request = serde_json::to_vec(&ReportBatch { reports, signature }).map_err(|e| e.to_string())?;
    post(agent, &format!("{device_url}/device/v1/reports"), Some(token), &request, 200)?;
    Ok(0)
}

/// The whole target, as `device`.
pub fn download(agent: &ureq::Agent, device_url: &str, device: &Device, target: &str) -> Outcome {
    let token = device.session.get().ok_or("no session")?;
    get(agent, &format!("{device_url}/{target}"), token, None, 200)
}

/// `length` bytes of the target from a place that moves with `k` (a resumed download).
pub fn download_range(
    agent: &ureq::Agent,
    device_url: &str,
    device: &Device,
    (target, size): (&str, u64),
    k: u64,
    length: u64,
) -> Outcome {
    let token = device.session.get().ok_or("no session")?;
    let span = size.saturating_sub(length).max(1);
    let from = k.wrapping_mul(7_919).wrapping_mul(4_096) % span;
    let to = (from + length).min(size).saturating_sub(1);
    let got = get(agent, &format!("{device_url}/{target}"), token, Some(&format!("bytes={from}-{to}")), 206)?;
    if got != to + 1 - from {
        return Err("short range".into());
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_keys_are_fixed_by_seed_and_index() {
        assert_eq!(public_hex(&device_key(1, 5)), public_hex(&device_key(1, 5)));
        assert_ne!(public_hex(&device_key(1, 5)), public_hex(&device_key(1, 6)));
        assert_ne!(public_hex(&device_key(1, 5)), public_hex(&device_key(2, 5)));
        let all = keys(9, 13);
        assert_eq!(all.len(), 13);
        for (i, k) in all.iter().enumerate() {
            assert_eq!(public_hex(k), public_hex(&device_key(9, i as u64)), "in order");
        }
    }
}
