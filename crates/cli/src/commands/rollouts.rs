//! `ringfence rollout`: rollouts the server runs on top of approvals. It may hold them back
//! (pause, stop, halt by itself on failures), never widen what the approvers signed.

use clap::Subcommand;
use ringfence_proto::GroupName;
use ringfence_proto::api::{RolloutStatus, StartRollout};

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Watch an approved update's rollout in a group and halt it by itself on failures.
    Start {
        #[command(flatten)]
        server: ServerArgs,
        update: String,
        #[arg(long)]
        group: String,
        /// Halt when more devices than this failed or got stuck.
        #[arg(long)]
        max_failures: Option<u64>,
        /// Halt when failures pass this share (default 5 %).
        #[arg(long)]
        max_failure_percent: Option<u8>,
        /// A device on its way longer than this counts as failed (default 24).
        #[arg(long)]
        stuck_hours: Option<u32>,
        /// The server's stages, growing percents ending at 100 (for example `5,25,100`): it
        /// holds the rollout to each until enough of its devices installed. Default: `100`.
        #[arg(long, value_delimiter = ',')]
        stages: Option<Vec<u8>>,
        /// Least hours a stage runs before the next (default 24).
        #[arg(long)]
        soak_hours: Option<u32>,
        /// Share of the devices admitted so far that must have installed to go on (default 95).
        #[arg(long)]
        success_percent: Option<u8>,
    },
    /// Hold at the share reached.
    Pause {
        #[command(flatten)]
        server: ServerArgs,
        update: String,
        #[arg(long)]
        group: String,
    },
    /// Let it go on (after a pause or a halt).
    Resume {
        #[command(flatten)]
        server: ServerArgs,
        update: String,
        #[arg(long)]
        group: String,
    },
    /// Ask the devices that failed to try again (after fixing what made them fail).
    Retry {
        #[command(flatten)]
        server: ServerArgs,
        update: String,
        #[arg(long)]
        group: String,
    },
    /// No device that has not installed it yet will.
    Stop {
        #[command(flatten)]
        server: ServerArgs,
        update: String,
        #[arg(long)]
        group: String,
    },
    /// Every rollout with its state, shares, stages, counts and the reason of a halt.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

fn print(statuses: &[RolloutStatus]) {
    if statuses.is_empty() {
        println!("no rollouts: `ringfence rollout start UPDATE --group G` starts one");
        return;
    }
    let mut table = output::Table::new(&[
        "GROUP",
        "UPDATE",
        "STATE",
        "APPROVED",
        "ALLOWED",
        "INSTALLED",
        "NEEDED",
        "FAILED",
        "STUCK",
        "WHY",
    ]);
    for s in statuses {
        table.row(vec![
            s.group.to_string(),
            s.update.clone(),
            s.state.clone(),
            format!("{} %", s.approved_share),
            format!("{} %", s.share),
            s.installed.to_string(),
            s.needed.to_string(),
            s.failed.to_string(),
            s.stuck.to_string(),
            s.reason.clone(),
        ]);
    }
    table.print();
    for s in statuses {
        println!();
        println!(
            "{} in {}: stage {} of {} since {} (soak {} h, goes on at {} % installed; retries {})",
            s.update,
            s.group,
            s.stage + 1,
            s.stages.len(),
            s.stage_since,
            s.soak_hours,
            s.success_percent,
            s.retries
        );
        let mut stages = output::Table::new(&["STAGE", "UP TO", "DEVICES", "INSTALLED", "FAILED", ""]);
        for (i, c) in s.stages.iter().enumerate() {
            let mark = if i == s.stage { "<- held here" } else { "" };
            stages.row(vec![
                (i + 1).to_string(),
                format!("{} %", c.percent),
                c.devices.to_string(),
                c.installed.to_string(),
                c.failed.to_string(),
                mark.to_owned(),
            ]);
        }
        stages.print();
    }
}

pub fn run(command: RolloutCommand) -> anyhow::Result<()> {
    let (server, update, group, action) = match command {
        RolloutCommand::Start {
            server,
            update,
            group,
            max_failures,
            max_failure_percent,
            stuck_hours,
            stages,
            soak_hours,
            success_percent,
        } => {
            let request = StartRollout {
                group: GroupName::parse(&group)?,
                update,
                max_failures,
                max_failure_percent,
                stuck_hours,
                stages,
                soak_hours,
                success_percent,
            };
            let answer = client(&server)?.send_json("POST", "/api/v1/rollouts", &request)?.ok()?;
            print(&[serde_json::from_slice(&answer)?]);
            return Ok(());
        }
        RolloutCommand::Status { server, json } => {
            let statuses: Vec<RolloutStatus> =
                serde_json::from_slice(&client(&server)?.get("/api/v1/rollouts")?.ok()?)?;
            if json {
                return output::json(&statuses);
            }
            print(&statuses);
            return Ok(());
        }
        RolloutCommand::Pause { server, update, group } => (server, update, group, "pause"),
        RolloutCommand::Resume { server, update, group } => (server, update, group, "resume"),
        RolloutCommand::Stop { server, update, group } => (server, update, group, "stop"),
        RolloutCommand::Retry { server, update, group } => (server, update, group, "retry"),
    };
    let group = GroupName::parse(&group)?;
    let path = format!("/api/v1/rollouts/{group}/{update}/{action}");
    let answer = client(&server)?.send("POST", &path, b"", "application/json")?.ok()?;
    print(&[serde_json::from_slice(&answer)?]);
    Ok(())
}
