//! `ringfence group`: the computer groups top-level targets defines. Creating a group or
//! changing its parent or approvers is an offline change to top-level targets
//! (`ringfence metadata set-group`), never an API call.

use clap::Subcommand;
use ringfence_proto::GroupName;
use ringfence_proto::api::{GroupInfo, WindowsRequest};
use ringfence_proto::tuf::Window;

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Set a group's maintenance windows (each like "sat,sun 01:00-05:00 Europe/Berlin"); its
    /// devices then install only inside one, unless a deadline passed. No --window: none.
    Windows {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        group: String,
        #[arg(long = "window")]
        windows: Vec<String>,
        #[command(flatten)]
        sign: super::pending::SignNow,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
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

/// "sat,sun 01:00-05:00 Europe/Berlin".
pub fn parse_window(text: &str) -> anyhow::Result<Window> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [days, span, tz] = parts.as_slice() else {
        anyhow::bail!("--window: \"DAYS HH:MM-HH:MM TIMEZONE\", like \"sat,sun 01:00-05:00 Europe/Berlin\"");
    };
    let (start, end) = span.split_once('-').ok_or_else(|| anyhow::anyhow!("--window: the span is HH:MM-HH:MM"))?;
    let window = Window {
        days: days.split(',').map(|d| d.to_ascii_lowercase()).collect(),
        start: start.into(),
        end: end.into(),
        tz: (*tz).to_owned(),
    };
    ringfence_trust::windows::check(&window).map_err(|e| anyhow::anyhow!("--window {text:?}: {e}"))?;
    Ok(window)
}

pub fn run(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Windows { server, group, windows, sign, json } => {
            let group = GroupName::parse(&group)?;
            let windows = windows.iter().map(|w| parse_window(w)).collect::<anyhow::Result<Vec<_>>>()?;
            let client = client(&server)?;
            let path = format!("/api/v1/groups/{group}/windows");
            let answer = client.send_json("PUT", &path, &WindowsRequest { windows })?.ok()?;
            super::repository::settled(&client, &group, &answer, &sign, json)?;
        }
        GroupCommand::List { server, json } => {
            let groups: Vec<GroupInfo> = serde_json::from_slice(&client(&server)?.get("/api/v1/groups")?.ok()?)?;
            if json {
                return output::json(&groups);
            }
            if groups.is_empty() {
                println!("no groups: add one to top-level targets with `ringfence metadata set-group`");
                return Ok(());
            }
            let mut table =
                output::Table::new(&["GROUP", "PARENT", "APPROVERS", "THRESHOLD", "AUTO-APPROVE", "WINDOWS"]);
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
                    if g.windows.is_empty() {
                        "any time".to_owned()
                    } else {
                        let texts: Vec<String> = g
                            .windows
                            .iter()
                            .map(|w| format!("{} {}-{} {}", w.days.join(","), w.start, w.end, w.tz))
                            .collect();
                        texts.join("; ")
                    },
                ]);
            }
            table.print();
        }
    }
    Ok(())
}
