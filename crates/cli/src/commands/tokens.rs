//! `ringfence token`: admin API tokens.

use anyhow::Context;
use clap::Subcommand;
use ringfence_proto::api::{Scope, TokenCreated, TokenInfo, TokenRequest, TokenRotation};

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token. Its secret is printed once, alone on standard output.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        name: String,
        /// publish, approve, read, admin, or replicate (alone: a downstream replica's token);
        /// repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Days until the token is refused (1 to 730; default 90).
        #[arg(long)]
        days: Option<u64>,
        /// Print JSON (for scripts), the secret included.
        #[arg(long)]
        json: bool,
    },
    /// The groups the downstream replica whose `replicate` token is named NAME may propose
    /// approvals and upload its approvers' signatures for (relayed from its site); with
    /// --group, set them (none: it may approve for no group).
    ReplicaGroups {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Only show them.
        #[arg(long, conflicts_with = "groups")]
        show: bool,
    },
    /// Replace a token by a new one with the same name and scopes, printed once like
    /// `create`'s. The old token keeps working for the grace period, so whatever uses it can
    /// move to the new one without downtime.
    Rotate {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        /// Minutes the old token keeps working (0 to 10080; default 60; 0 ends it at once).
        #[arg(long)]
        grace_minutes: Option<u64>,
        /// Days until the new token is refused (1 to 730; default 90).
        #[arg(long)]
        days: Option<u64>,
        /// Print JSON (for scripts), the secret included.
        #[arg(long)]
        json: bool,
    },
    /// Every token, revoked ones included, without secrets.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::ReplicaGroups { server, name, groups, show } => {
            let path = format!("/api/v1/replicas/{}/groups", ringfence_trust::workflow::encode_role(&name));
            let client = client(&server)?;
            let answer = if show {
                client.get(&path)?.ok()?
            } else {
                let groups = groups
                    .iter()
                    .map(|g| ringfence_proto::GroupName::parse(g).with_context(|| format!("--group {g}")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                client.send_json("PUT", &path, &ringfence_proto::api::ReplicaGroups { groups })?.ok()?
            };
            let groups: ringfence_proto::api::ReplicaGroups = serde_json::from_slice(&answer)?;
            let names: Vec<String> = groups.groups.iter().map(ToString::to_string).collect();
            println!(
                "replica {name} may approve for: {}",
                if names.is_empty() { "no group".into() } else { names.join(", ") }
            );
        }
        TokenCommand::Create { server, name, scopes, days, json } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s)
                        .with_context(|| format!("unknown scope {s}; use publish, approve, read, admin or replicate"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let request = TokenRequest { name, scopes, expires_in_days: days };
            let answer = client(&server)?.send_json("POST", "/api/v1/tokens", &request)?.ok()?;
            let created: TokenCreated = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&created);
            }
            print_created(&created);
        }
        TokenCommand::Rotate { server, id, grace_minutes, days, json } => {
            let rotation = TokenRotation { grace_minutes, expires_in_days: days };
            let answer = client(&server)?.send_json("POST", &format!("/api/v1/tokens/{id}/rotate"), &rotation)?.ok()?;
            let created: TokenCreated = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&created);
            }
            print_created(&created);
            eprintln!(
                "token {id} keeps working for {} more minute(s); move its users to the token above",
                grace_minutes.unwrap_or(60)
            );
        }
        TokenCommand::List { server, json } => {
            let answer = client(&server)?.get("/api/v1/tokens")?.ok()?;
            let tokens: Vec<TokenInfo> = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&tokens);
            }
            let mut table = output::Table::new(&["ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "STATE"]);
            let now = crate::now();
            for t in &tokens {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_at <= now {
                    "expired"
                } else {
                    "active"
                };
                table.row(vec![
                    t.id.clone(),
                    t.name.clone(),
                    scopes.join(","),
                    output::time(t.created_at),
                    output::time(t.expires_at),
                    state.into(),
                ]);
            }
            table.print();
        }
        TokenCommand::Revoke { server, id } => {
            client(&server)?.send("DELETE", &format!("/api/v1/tokens/{id}"), &[], "application/json")?.ok()?;
            println!("token {id} is revoked: it is refused from now on");
        }
    }
    Ok(())
}

/// A new token's secret alone on standard output, what it is on standard error.
fn print_created(created: &TokenCreated) {
    println!("{}", created.token);
    let scopes: Vec<&str> = created.scopes.iter().map(|s| s.as_str()).collect();
    eprintln!(
        "token {} with scopes {}, refused from {}: the secret above is shown only now; revoke it with \
         `ringfence token revoke {}`",
        created.id,
        scopes.join(", "),
        output::time(created.expires_at),
        created.id
    );
}
