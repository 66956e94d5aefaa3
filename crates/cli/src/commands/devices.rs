//! `ringfence device`: enrollment tokens, the fleet list, accept / reject / revoke.

use clap::Subcommand;
use ringfence_proto::GroupName;
use ringfence_proto::device::{DeviceInfo, EnrollmentTokenCreated, EnrollmentTokenRequest};

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create an enrollment token scoped to groups. Its secret is printed once, alone on
    /// standard output.
    EnrollmentToken {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        #[arg(long, default_value_t = 1)]
        uses: u64,
        #[arg(long, default_value_t = 86_400)]
        expires_in_secs: u64,
        /// Print JSON (for scripts), the secret included.
        #[arg(long)]
        json: bool,
    },
    /// Devices with their groups, last check-in and the state of each update, fetched a page
    /// at a time.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only devices in this state (pending, accepted, rejected, revoked).
        #[arg(long)]
        state: Option<String>,
        /// Stop after this many devices (all by default).
        #[arg(long)]
        limit: Option<u64>,
        /// Print JSON (for scripts): one array of every device listed.
        #[arg(long)]
        json: bool,
    },
    /// Accept device keys before the devices enroll (importing a fleet): each key becomes an
    /// accepted device in the groups given, and may open sessions at once. Keys are sent
    /// 5,000 to a request, each request all or nothing. Prints each device's id and key.
    Preauthorize {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// A device's ed25519 public key (64 hex characters, as `ringfence-agent status` shows
        /// it); repeat for more.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// A file of keys, one per line (blank lines and lines starting with '#' ignored).
        #[arg(long)]
        keys_file: Option<std::path::PathBuf>,
        /// Print JSON (for scripts): one array of every device stored.
        #[arg(long)]
        json: bool,
    },
    /// Accept a pending device.
    Accept {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Reject a pending device.
    Reject {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Revoke a device: its sessions end at once.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Check a device's newest report on an approval path against the device's own key.
    Evidence {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        /// The approval path, e.g. approvals/production/acme/hello.txt.
        #[arg(long)]
        target: String,
        /// The device's public key as the device itself shows it (`ringfence-agent status`,
        /// "device key"). Without it the check uses the key the server reports, which proves
        /// nothing against a server that lies.
        #[arg(long)]
        device_key: Option<String>,
        /// Print JSON (for scripts), after the check.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::EnrollmentToken { server, groups, uses, expires_in_secs, json } => {
            let groups = groups.iter().map(|g| GroupName::parse(g)).collect::<Result<Vec<_>, _>>()?;
            let names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            let request = EnrollmentTokenRequest { groups, expires_in_secs, max_uses: uses };
            let answer = client(&server)?.send_json("POST", "/api/v1/enrollment-tokens", &request)?.ok()?;
            let created: EnrollmentTokenCreated = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&created);
            }
            println!("{}", created.token);
            eprintln!(
                "enrollment token {} admits devices to {} ({uses} use(s), until {}); on a device: \
                 ringfence-agent enroll --group <group> --token <the token above> ...",
                created.id,
                names.join(", "),
                output::time(created.expires_at)
            );
        }
        DeviceCommand::Preauthorize { server, groups, keys, keys_file, json } => {
            preauthorize(&server, &groups, keys, keys_file.as_deref(), json)?
        }
        DeviceCommand::List { server, state, limit, json } => list(&server, state.as_deref(), limit, json)?,
        DeviceCommand::Accept { server, id } => change(&server, &id, "accept", "is accepted: it may open sessions")?,
        DeviceCommand::Reject { server, id } => change(&server, &id, "reject", "is rejected")?,
        DeviceCommand::Revoke { server, id } => change(&server, &id, "revoke", "is revoked: its sessions ended")?,
        DeviceCommand::Evidence { server, id, target, device_key, json } => {
            evidence(&server, &id, &target, device_key.as_deref(), json)?
        }
    }
    Ok(())
}

fn list(server: &ServerArgs, state: Option<&str>, limit: Option<u64>, json: bool) -> anyhow::Result<()> {
    const PAGE: u64 = 500;
    if let Some(s) = state
        && !s.bytes().all(|b| b.is_ascii_lowercase())
    {
        anyhow::bail!("--state: pending, accepted, rejected or revoked");
    }
    let client = client(server)?;
    let mut after = String::new();
    let mut left = limit.unwrap_or(u64::MAX);
    let mut all = Vec::new();
    let mut first = true;
    while left > 0 {
        let page = left.min(PAGE);
        let mut path = format!("/api/v1/devices?limit={page}");
        if !after.is_empty() {
            path.push_str(&format!("&after={after}"));
        }
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        let devices: Vec<DeviceInfo> = serde_json::from_slice(&client.get(&path)?.ok()?)?;
        let fetched = devices.len() as u64;
        left = left.saturating_sub(fetched);
        if let Some(last) = devices.last() {
            after = last.id.clone();
        }
        if json {
            all.extend(devices);
        } else {
            print_devices(&devices, first);
            first = false;
        }
        if fetched < page {
            break;
        }
    }
    if json {
        return output::json(&all);
    }
    Ok(())
}

/// One table row per device, each followed by its updates' states, indented; the header
/// only above the first page (each page is aligned on its own, so a long list streams).
fn print_devices(devices: &[DeviceInfo], header: bool) {
    if devices.is_empty() {
        if header {
            println!("no devices");
        }
        return;
    }
    let mut table = output::Table::new(&["ID", "STATE", "HOST", "GROUPS", "LAST CHECK-IN"]);
    for d in devices {
        let seen = d.last_checkin.map_or("never".to_owned(), output::time);
        table.row(vec![d.id.clone(), d.state.clone(), d.hostname.clone(), d.groups.join(","), seen]);
    }
    let lines = table.lines();
    let mut lines = lines.into_iter();
    if let Some(first) = lines.next()
        && header
    {
        println!("{first}");
    }
    for (d, line) in devices.iter().zip(lines) {
        println!("{line}");
        for u in &d.updates {
            // A device wrote the reason: shown, never put on the terminal raw.
            let shown = ringfence_trust::review::shown;
            let reason = u.reason.as_ref().map(|r| format!(" ({})", shown(r))).unwrap_or_default();
            println!("    {}: {}{reason}", shown(&u.target), u.state.as_str());
        }
    }
}

fn preauthorize(
    server: &ServerArgs,
    groups: &[String],
    mut keys: Vec<String>,
    keys_file: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    use ringfence_proto::device::{MAX_PREAUTHORIZE, PreauthorizeBatch, PreauthorizeRequest, PreauthorizedDevices};
    let groups = groups.iter().map(|g| GroupName::parse(g)).collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = keys_file {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned));
    }
    anyhow::ensure!(!keys.is_empty(), "no keys: give --key or --keys-file");
    let client = client(server)?;
    let mut stored = Vec::with_capacity(keys.len());
    let mut failed = None;
    for chunk in keys.chunks(MAX_PREAUTHORIZE) {
        let devices =
            chunk.iter().map(|k| PreauthorizeRequest { public_key: k.clone(), groups: groups.clone() }).collect();
        let answer = client.send_json("POST", "/api/v1/devices/preauthorize", &PreauthorizeBatch { devices })?;
        match answer.ok() {
            Ok(body) => stored.extend(serde_json::from_slice::<PreauthorizedDevices>(&body)?.devices),
            Err(e) => {
                failed = Some(anyhow::anyhow!(
                    "{e} ({} devices stored before this request, listed above; none of its {})",
                    stored.len(),
                    chunk.len()
                ));
                break;
            }
        }
    }
    // What was stored is printed even when a later request failed: those devices exist.
    if json {
        output::json(&stored)?;
    } else {
        let shown = ringfence_trust::review::shown;
        for d in &stored {
            println!("{} {}", shown(&d.id), shown(&d.public_key));
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    eprintln!(
        "{} devices accepted in {}",
        stored.len(),
        groups.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn change(server: &ServerArgs, id: &str, action: &str, outcome: &str) -> anyhow::Result<()> {
    client(server)?.send("POST", &format!("/api/v1/devices/{id}/{action}"), b"", "application/json")?.ok()?;
    println!("device {id} {outcome}");
    Ok(())
}

/// Fetch what the server kept for a device's newest report on `target` and check it here:
/// the device's key signed the batch, the batch names the device, and holds that report.
fn evidence(server: &ServerArgs, id: &str, target: &str, pinned: Option<&str>, json: bool) -> anyhow::Result<()> {
    use ringfence_proto::device::{ReportEvidence, parse_report_batch_message};
    let mut path = format!("/api/v1/devices/{id}/evidence?target=");
    // The target goes into a query string: percent-encode all but plain characters.
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let evidence: ReportEvidence = serde_json::from_slice(&client(server)?.get(&path)?.ok()?)?;
    if let Some(pinned) = pinned {
        anyhow::ensure!(
            pinned.trim().eq_ignore_ascii_case(&evidence.public_key),
            "the server reports key {} for device {id}, not the device's own {pinned}: do not trust this report",
            evidence.public_key
        );
    }
    let key = ringfence_trust::PublicKey::from_tuf(&ringfence_proto::tuf::Key {
        keytype: "ed25519".into(),
        scheme: "ed25519".into(),
        keyval: ringfence_proto::tuf::KeyVal { public: evidence.public_key.clone(), unrecognized: Default::default() },
        unrecognized: Default::default(),
    })?;
    let signature = hex::decode(&evidence.signature)?;
    key.verify(evidence.message.as_bytes(), &signature).map_err(|_| {
        anyhow::anyhow!("the signature does not verify with device {id}'s key: do not trust this report")
    })?;
    let (signer, reports) = parse_report_batch_message(evidence.message.as_bytes())
        .ok_or_else(|| anyhow::anyhow!("the signed message is not a report batch"))?;
    anyhow::ensure!(signer == evidence.device_id && signer == id, "the batch was signed for device {signer}, not {id}");
    anyhow::ensure!(
        reports.contains(&evidence.report),
        "the signed batch does not hold the report the server shows: do not trust it"
    );
    if json {
        return output::json(&evidence);
    }
    let r = &evidence.report;
    let whose = if pinned.is_some() {
        "the device's own key"
    } else {
        "the key the SERVER reports (pass --device-key to pin it)"
    };
    // The device wrote the target and the reason (signed, but its own words): shown.
    let shown = ringfence_trust::review::shown;
    println!(
        "verified with {whose}: device {} (key {}) signed at {} that {} was {}{}",
        shown(id),
        shown(&evidence.public_key),
        output::time(r.at),
        shown(&r.target),
        r.state.as_str(),
        r.reason.as_ref().map(|why| format!(" ({})", shown(why))).unwrap_or_default()
    );
    Ok(())
}
