//! `ringfence report`: compliance per group, where a CVE stands, devices not seen for a while.
//! Tables for people, `--json` for scripts; the admin API also answers CSV
//! (`/api/v1/reports/...?format=csv`).

use clap::Subcommand;
use ringfence_proto::api::{ComplianceReport, ComplianceRow, CveReport, StaleDevice, parse_cve};

use crate::{ServerArgs, client, http, output};

/// Rows asked for per request.
const PAGE: u64 = 1000;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Per approved file of a group: devices installed, needed, failed, not applicable,
    /// uninstalled, and without status.
    Compliance {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        group: String,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Which updates fix a CVE, where they are approved and installed, and which devices are
    /// still exposed.
    Cve {
        #[command(flatten)]
        server: ServerArgs,
        /// The CVE id, e.g. CVE-2025-59287.
        cve: String,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The devices enrolled through one downstream replica (by its token's name): by state,
    /// and per target how many devices are in each state.
    Site {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Accepted devices not seen for this many days.
    Stale {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Compliance { server, group, json } => compliance(&client(&server)?, &group, json),
        ReportCommand::Cve { server, cve, json } => cve_report(&client(&server)?, &cve, json),
        ReportCommand::Stale { server, days, json } => stale(&client(&server)?, days, json),
        ReportCommand::Site { server, name, json } => {
            let path = format!("/api/v1/reports/site/{}", ringfence_trust::workflow::encode_role(&name));
            let report: ringfence_proto::api::SiteCompliance =
                serde_json::from_slice(&client(&server)?.get(&path)?.ok()?)?;
            if json {
                return output::json(&report);
            }
            let devices: Vec<String> = report.devices.iter().map(|(s, n)| format!("{n} {s}")).collect();
            println!(
                "site {}: {}{}",
                ringfence_trust::review::shown(&report.site),
                if devices.is_empty() { "no devices".to_owned() } else { devices.join(", ") },
                if report.truncated { " (the first 100,000 devices counted)" } else { "" }
            );
            for t in &report.targets {
                let states: Vec<String> = t.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
                println!("  {}: {}", ringfence_trust::review::shown(&t.target), states.join(", "));
            }
            Ok(())
        }
    }
}

fn compliance(client: &http::Client, group: &str, json: bool) -> anyhow::Result<()> {
    ringfence_proto::GroupName::parse(group)?;
    let mut rows: Vec<ComplianceRow> = Vec::new();
    let devices = loop {
        let mut path = format!("/api/v1/reports/compliance?group={group}&limit={PAGE}");
        if let Some(last) = rows.last() {
            path.push_str(&format!("&after={}", last.target));
        }
        let page: ComplianceReport = serde_json::from_slice(&client.get(&path)?.ok()?)?;
        let full = page.rows.len() as u64 == PAGE;
        rows.extend(page.rows);
        if !full {
            break page.devices;
        }
    };
    if json {
        let group = ringfence_proto::GroupName::parse(group)?;
        return output::json(&ComplianceReport { group, devices, rows });
    }
    println!("{group}: {devices} device(s), {} approved or reported file(s)", rows.len());
    if rows.is_empty() {
        return Ok(());
    }
    let mut table = output::Table::new(&[
        "FILE",
        "UPDATE",
        "ACTION",
        "DEADLINE",
        "INSTALLED",
        "NEEDED",
        "FAILED",
        "N/A",
        "REMOVED",
        "NO STATUS",
    ]);
    for r in &rows {
        table.row(vec![
            r.target.to_string(),
            r.update_id.clone().unwrap_or_else(|| "-".into()),
            r.action.map_or("withdrawn".to_owned(), |a| a.as_str().to_owned()),
            r.deadline.clone().unwrap_or_else(|| "-".into()),
            r.installed.to_string(),
            r.needed.to_string(),
            r.failed.to_string(),
            r.not_applicable.to_string(),
            r.uninstalled.to_string(),
            r.no_status.to_string(),
        ]);
    }
    table.print();
    Ok(())
}

fn cve_report(client: &http::Client, cve: &str, json: bool) -> anyhow::Result<()> {
    let cve = parse_cve(cve).ok_or_else(|| anyhow::anyhow!("{cve} is not a CVE id like CVE-2025-59287"))?;
    let mut report: Option<CveReport> = None;
    loop {
        let mut path = format!("/api/v1/reports/cve/{cve}?limit={PAGE}");
        if let Some(last) = report.as_ref().and_then(|r| r.exposed.last()) {
            path.push_str(&format!("&after={}", last.device_id));
        }
        let page: CveReport = serde_json::from_slice(&client.get(&path)?.ok()?)?;
        let mut devices: Vec<&str> = page.exposed.iter().map(|d| d.device_id.as_str()).collect();
        devices.dedup();
        let full = devices.len() as u64 == PAGE;
        match &mut report {
            Some(r) => r.exposed.extend(page.exposed),
            None => report = Some(page),
        }
        if !full {
            break;
        }
    }
    let Some(report) = report else { return Ok(()) };
    if json {
        return output::json(&report);
    }
    if report.updates.is_empty() {
        println!("{cve}: no update in the catalog says it fixes it");
        return Ok(());
    }
    println!("{cve} is fixed by {}", report.updates.join(", "));
    let mut groups = output::Table::new(&["GROUP", "APPROVED", "INSTALLED", "DEVICES"]);
    for g in &report.groups {
        let approved = if g.approved { "yes" } else { "no" };
        groups.row(vec![g.group.to_string(), approved.into(), g.installed.to_string(), g.devices.to_string()]);
    }
    groups.print();
    let unapproved: Vec<String> = report.groups.iter().filter(|g| !g.approved).map(|g| g.group.to_string()).collect();
    if !unapproved.is_empty() {
        println!("not approved in: {} (every device there stays exposed)", unapproved.join(", "));
    }
    if report.exposed.is_empty() {
        println!("no device reported a fixing update failed or still pending");
        return Ok(());
    }
    println!("exposed devices (their newest report on a fixing update):");
    let mut table = output::Table::new(&["DEVICE", "HOST", "STATE", "SINCE", "APPROVAL"]);
    for d in &report.exposed {
        table.row(vec![d.device_id.clone(), d.hostname.clone(), d.state.clone(), output::time(d.at), d.target.clone()]);
    }
    table.print();
    Ok(())
}

fn stale(client: &http::Client, days: u64, json: bool) -> anyhow::Result<()> {
    let mut all: Vec<StaleDevice> = Vec::new();
    loop {
        let mut path = format!("/api/v1/reports/stale?days={days}&limit={PAGE}");
        if let Some(last) = all.last() {
            path.push_str(&format!("&after={}", last.id));
        }
        let page: Vec<StaleDevice> = serde_json::from_slice(&client.get(&path)?.ok()?)?;
        let full = page.len() as u64 == PAGE;
        all.extend(page);
        if !full {
            break;
        }
    }
    if json {
        return output::json(&all);
    }
    if all.is_empty() {
        println!("every accepted device checked in within {days} day(s)");
        return Ok(());
    }
    let mut table = output::Table::new(&["DEVICE", "HOST", "GROUPS", "LAST CHECK-IN"]);
    for d in &all {
        let seen = d.last_checkin.map_or("never".to_owned(), output::time);
        table.row(vec![d.id.clone(), d.hostname.clone(), d.groups.join(","), seen]);
    }
    table.print();
    Ok(())
}
