//! `ringfence group`: the computer groups top-level targets defines. Creating a group or
//! changing its parent or approvers is an offline change to top-level targets
//! (`ringfence metadata set-group`), never an API call.

use clap::Subcommand;
use ringfence_proto::api::GroupInfo;

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group with its parent, approvers, threshold, and whether the server approves for
    /// it by rules.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List { server, json } => {
            let groups: Vec<GroupInfo> = serde_json::from_slice(&client(&server)?.get("/api/v1/groups")?.ok()?)?;
            if json {
                return output::json(&groups);
            }
            if groups.is_empty() {
                println!("no groups: add one to top-level targets with `ringfence metadata set-group`");
                return Ok(());
            }
            let mut table = output::Table::new(&["GROUP", "PARENT", "APPROVERS", "THRESHOLD", "AUTO-APPROVE"]);
            for g in &groups {
                let approvers: Vec<&str> = g.approvers.iter().map(|k| k.get(..12).unwrap_or(k)).collect();
                table.row(vec![
                    g.name.to_string(),
                    g.parent.as_ref().map_or("-".to_owned(), |p| p.to_string()),
                    approvers.join(","),
                    g.threshold.to_string(),
                    match (&g.auto_approve, &g.inherits_auto_approval_from) {
                        (true, _) => "yes".to_owned(),
                        (false, Some(from)) => format!("inherited from {from}"),
                        (false, None) => "no".to_owned(),
                    },
                ]);
            }
            table.print();
        }
    }
    Ok(())
}
