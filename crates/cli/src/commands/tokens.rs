//! `ringfence token`: admin API tokens.

use anyhow::Context;
use clap::Subcommand;
use ringfence_proto::api::{Scope, TokenCreated, TokenInfo, TokenRequest};

use crate::{ServerArgs, client, output};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token. Its secret is printed once, alone on standard output.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        name: String,
        /// publish, approve, read or admin; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
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
        TokenCommand::Create { server, name, scopes, json } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).with_context(|| format!("unknown scope {s}; use publish, approve, read or admin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let answer = client(&server)?.send_json("POST", "/api/v1/tokens", &TokenRequest { name, scopes })?.ok()?;
            let created: TokenCreated = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&created);
            }
            println!("{}", created.token);
            let scopes: Vec<&str> = created.scopes.iter().map(|s| s.as_str()).collect();
            eprintln!(
                "token {} with scopes {}: the secret above is shown only now; revoke it with \
                 `ringfence token revoke {}`",
                created.id,
                scopes.join(", "),
                created.id
            );
        }
        TokenCommand::List { server, json } => {
            let answer = client(&server)?.get("/api/v1/tokens")?.ok()?;
            let tokens: Vec<TokenInfo> = serde_json::from_slice(&answer)?;
            if json {
                return output::json(&tokens);
            }
            let mut table = output::Table::new(&["ID", "NAME", "SCOPES", "CREATED", "STATE"]);
            for t in &tokens {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                let state = if t.revoked { "revoked" } else { "active" };
                table.row(vec![
                    t.id.clone(),
                    t.name.clone(),
                    scopes.join(","),
                    output::time(t.created_at),
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
