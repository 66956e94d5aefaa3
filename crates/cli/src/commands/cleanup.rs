//! `ringfence cleanup`: remove content no approval needs and devices not seen for a long time.

use ringfence_proto::api::{CleanupReport, CleanupRequest};

use crate::{ServerArgs, client, output};

pub fn run(server: &ServerArgs, dry_run: bool, devices_not_seen_days: Option<u32>, json: bool) -> anyhow::Result<()> {
    let request = CleanupRequest { dry_run, devices_not_seen_days };
    let answer = client(server)?.send_json("POST", "/api/v1/cleanup", &request)?.ok()?;
    let report: CleanupReport = serde_json::from_slice(&answer)?;
    if json {
        return output::json(&report);
    }
    let verb = if report.dry_run { "would remove" } else { "removed" };
    println!("{verb} {} content file(s), {} bytes", report.content.len(), report.content_bytes);
    if !report.content.is_empty() {
        let mut table = output::Table::new(&["SHA256", "BYTES", "WHY"]);
        for c in &report.content {
            table.row(vec![c.sha256.clone(), c.length.to_string(), c.reason.clone()]);
        }
        table.print();
    }
    if let Some(days) = devices_not_seen_days {
        let verb = if report.dry_run { "would forget" } else { "forgot" };
        println!("{verb} {} device(s) not seen for {days} day(s)", report.devices.len());
        if !report.devices.is_empty() {
            let mut table = output::Table::new(&["DEVICE", "HOST", "STATE", "LAST SEEN"]);
            for d in &report.devices {
                table.row(vec![d.id.clone(), d.hostname.clone(), d.state.clone(), output::time(d.last_seen)]);
            }
            table.print();
        }
    }
    if report.dry_run && (!report.content.is_empty() || !report.devices.is_empty()) {
        println!("next: run it again without --dry-run to remove them");
    }
    Ok(())
}
