//! `ringfence rule`: automatic approval rules.

use anyhow::Context;
use clap::Subcommand;
use ringfence_proto::GroupName;
use ringfence_proto::api::{Classification, RuleAfter, RuleInfo, RuleRequest, Severity};

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Approve matching updates for a group automatically (at once where the server's
    /// auto-approver signs the group's approvals; otherwise prepared for its approvers).
    Add {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        group: String,
        /// Only this publisher's updates (repeat for several; any when absent).
        #[arg(long = "publisher")]
        publishers: Vec<String>,
        /// Only this product (repeat for several; any when absent).
        #[arg(long = "product")]
        products: Vec<String>,
        /// security, critical, feature, bugfix, driver or tool (repeat; any when absent).
        #[arg(long = "classification")]
        classifications: Vec<String>,
        /// critical, important, moderate, low or unspecified (repeat; any when absent).
        #[arg(long = "severity")]
        severities: Vec<String>,
        /// Only once the update succeeded on this group…
        #[arg(long, requires = "after_days")]
        after_group: Option<String>,
        /// …for this many days…
        #[arg(long, requires = "after_group")]
        after_days: Option<u32>,
        /// …with at most this share of failures.
        #[arg(long, default_value_t = 5)]
        max_failure_percent: u8,
        /// Give the approval a deadline this many days after it is made.
        #[arg(long)]
        deadline_days: Option<u32>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    Remove {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

fn describe(rule: &RuleRequest) -> String {
    let list = |items: Vec<&str>| if items.is_empty() { "any".to_owned() } else { items.join(",") };
    let mut text = format!(
        "publisher {}, product {}, classification {}, severity {}",
        list(rule.publishers.iter().map(|p| p.as_str()).collect()),
        list(rule.products.iter().map(String::as_str).collect()),
        list(rule.classifications.iter().map(|c| c.as_str()).collect()),
        list(rule.severities.iter().map(|s| s.as_str()).collect()),
    );
    if let Some(after) = &rule.after {
        text.push_str(&format!(
            "; {} day(s) after success on {} (at most {} % failures)",
            after.days, after.group, after.max_failure_percent
        ));
    }
    if let Some(days) = rule.deadline_days {
        text.push_str(&format!("; deadline {days} day(s) later"));
    }
    text
}

pub fn run(command: RuleCommand) -> anyhow::Result<()> {
    match command {
        RuleCommand::Add {
            server,
            group,
            publishers,
            products,
            classifications,
            severities,
            after_group,
            after_days,
            max_failure_percent,
            deadline_days,
            json,
        } => {
            let classifications = classifications
                .iter()
                .map(|c| Classification::parse(c).with_context(|| format!("unknown classification {c}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let severities = severities
                .iter()
                .map(|s| Severity::parse(s).with_context(|| format!("unknown severity {s}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let after = match (after_group, after_days) {
                (Some(g), Some(days)) => Some(RuleAfter { group: GroupName::parse(&g)?, days, max_failure_percent }),
                _ => None,
            };
            let publishers =
                publishers.iter().map(|p| ringfence_proto::PublisherName::parse(p)).collect::<Result<Vec<_>, _>>()?;
            let rule = RuleRequest {
                group: GroupName::parse(&group)?,
                publishers,
                products,
                classifications,
                severities,
                after,
                deadline_days,
            };
            let answer = client(&server)?.send_json("POST", "/api/v1/rules", &rule)?.ok()?;
            let added: RuleInfo = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&added);
            }
            println!("rule {} approves for {}: {}", added.id, added.rule.group, describe(&added.rule));
            println!(
                "updates it matches are approved now and as they are published; remove it with `ringfence rule remove {}`",
                added.id
            );
        }
        RuleCommand::List { server, json } => {
            let rules: Vec<RuleInfo> = serde_json::from_slice(&client(&server)?.get("/api/v1/rules")?.ok()?)?;
            if json {
                return output::json(&rules);
            }
            if rules.is_empty() {
                println!("no rules: `ringfence rule add --group G ...` adds one");
                return Ok(());
            }
            let mut table = output::Table::new(&["ID", "GROUP", "MATCHES", "ADDED"]);
            for r in &rules {
                table.row(vec![r.id.clone(), r.rule.group.to_string(), describe(&r.rule), output::time(r.created_at)]);
            }
            table.print();
        }
        RuleCommand::Remove { server, id } => {
            client(&server)?.send("DELETE", &format!("/api/v1/rules/{id}"), &[], "application/json")?.ok()?;
            println!("rule {id} is removed; what it approved stays approved");
        }
    }
    Ok(())
}
