//! `ringfence audit`: the audit trail, newest first, a page at a time.

use ringfence_proto::api::AuditEntry;

use crate::{ServerArgs, client, output};

pub fn run(server: &ServerArgs, limit: u64, before: Option<i64>, json: bool) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/audit?limit={limit}");
    if let Some(before) = before {
        path.push_str(&format!("&before={before}"));
    }
    let entries: Vec<AuditEntry> = serde_json::from_slice(&client(server)?.get(&path)?.ok()?)?;
    if json {
        return output::json(&entries);
    }
    if entries.is_empty() {
        println!("no audit records{}", if before.is_some() { " before that one" } else { "" });
        return Ok(());
    }
    let mut table = output::Table::new(&["SEQ", "TIME", "ACTOR", "ACTION", "DETAIL"]);
    for e in &entries {
        table.row(vec![e.seq.to_string(), output::time(e.at), e.actor.clone(), e.action.clone(), e.detail.clone()]);
    }
    table.print();
    if entries.len() as u64 == limit
        && let Some(last) = entries.last()
    {
        println!("next: ringfence audit --before {}", last.seq);
    }
    Ok(())
}
