//! `gateway pair ...`: pairing two running servers and showing the link.
//! Every pair command talks to the running instance; the pair link lives
//! in the server process.

use serde_json::{Value, json};

use super::{CodeInput, ConflictsAction, PairAction};
use crate::admin::client::AdminClient;

fn read_code(input: &CodeInput) -> anyhow::Result<String> {
    super::activation::read_secret(
        input.code.as_ref(),
        input.code_file.as_deref(),
        "pairing code",
        "--code-file",
    )
}

/// Renders the pair status for people.
pub fn render_pair(status: &Value) -> String {
    if status.is_null() {
        return "pair:        not configured (no [pair] table)\n".into();
    }
    let s = |k: &str| status[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "pair:        {} (link {}, since {})\n",
        s("state"),
        s("link"),
        status["since"].as_str().unwrap_or("-")
    );
    out += &format!("  peer:      {} at {}\n", s("peer"), s("peer_address"));
    if !status["peer_fingerprint"].is_null() {
        out += &format!("  peer cert: {}\n", s("peer_fingerprint"));
    }
    out += &format!("  this cert: {}\n", s("fingerprint"));
    out += &format!("  listen:    {}\n", s("listen"));
    if status["pairing_open"] == json!(true) {
        out += "  a pairing code is open\n";
    }
    if let Some(r) = status["refused"].as_str() {
        out += &format!("  refused:   {r}\n");
    }
    if let Some(sync) = status["sync"].as_str() {
        let num = |k: &str| {
            status[k]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |n| n.to_string())
        };
        out += &format!(
            "  sync:      {sync}{}\n",
            status["reason"]
                .as_str()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
        out += &format!(
            "  config:    version {} (epoch {}), peer version {} (epoch {}), lag {} ms, last in sync {}\n",
            num("config_version"),
            num("epoch"),
            num("peer_config_version"),
            num("peer_epoch"),
            num("lag_ms"),
            status["last_sync_at"].as_str().unwrap_or("never")
        );
    }
    if let Some(jobs) = status["replication"].as_str() {
        out += &format!(
            "  jobs:      replication {jobs}, {} not on the peer yet{}\n",
            status["unreplicated_jobs"].as_u64().unwrap_or(0),
            status["replication_error"]
                .as_str()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    let jobs = &status["jobs"];
    if let Some(permit) = jobs["permit"].as_str().filter(|p| !p.is_empty()) {
        let lease = jobs["lease_left_ms"]
            .as_u64()
            .map(|ms| format!(", {ms} ms left"))
            .unwrap_or_default();
        out += &format!(
            "  owner:     {permit}{lease}; took over the peer's jobs {} time(s) ({} still running here), the peer took this server's {} time(s)\n",
            jobs["takeovers"].as_u64().unwrap_or(0),
            jobs["taken_over_open"].as_u64().unwrap_or(0),
            jobs["takeovers_applied"].as_u64().unwrap_or(0),
        );
        if let Some(events) = jobs["events"].as_object().filter(|e| !e.is_empty()) {
            let list: Vec<String> = events.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out += &format!("  events:    {} (`gateway pair events`)\n", list.join(", "));
        }
        if let Some(f) = jobs["per_server_folders"]
            .as_array()
            .filter(|f| !f.is_empty())
        {
            let names: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
            out += &format!(
                "  warning:   workflows {} deliver into each server's own {{data_dir}} folder; use a folder both servers share\n",
                names.join(", ")
            );
        }
    }
    if let Some(n) = status["open_conflicts"].as_u64().filter(|n| *n > 0) {
        out += &format!("  conflicts: {n} open (`gateway pair conflicts`)\n");
    }
    out
}

/// Renders the conflict report for people.
pub fn render_conflicts(all: &[Value]) -> String {
    if all.is_empty() {
        return "no conflicts: every configuration change is in the primary's configuration\n"
            .into();
    }
    let mut out = String::new();
    for c in all {
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
        let state = match c["applied_as"].as_str() {
            Some(v) => format!("re-applied as {v}"),
            None => "open".to_owned(),
        };
        out += &format!(
            "{}  {} {} (version {} of epoch {}, made on {}; compared with {}) — {}\n",
            s("id"),
            s("kind"),
            s("name"),
            c["version"],
            s("epoch"),
            s("origin"),
            s("against"),
            state
        );
        if let Some(diff) = c["diff_if_applied"].as_array() {
            out += "      re-applying it replaces the whole document here:";
            if diff.is_empty() {
                out += " no change\n";
            } else {
                out.push('\n');
                for line in diff {
                    out += &format!("        {}\n", line.as_str().unwrap_or_default());
                }
            }
        }
    }
    out += "re-apply one on the primary with `gateway pair conflicts apply ID`\n";
    out
}

/// The pair events as lines for a person, newest first.
pub fn render_events(all: &[Value]) -> String {
    if all.is_empty() {
        return "no events: no job moved between the two servers and no duplicate was reported\n"
            .into();
    }
    all.iter()
        .map(|e| {
            format!(
                "{}  {:<20} {}\n",
                e["at"].as_str().unwrap_or("-"),
                e["kind"].as_str().unwrap_or("-"),
                e["detail"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// Runs a pair command against the running instance.
pub async fn run(client: AdminClient, action: PairAction) -> anyhow::Result<i32> {
    let call = |e: crate::admin::client::AdminCallError| anyhow::anyhow!("{e}");
    match action {
        PairAction::Init => {
            let r = client.post("/pair/init", json!({})).await.map_err(call)?;
            println!("{}", r["code"].as_str().unwrap_or_default());
            eprintln!(
                "give this code to the secondary's admin: `gateway pair join CODE` there (valid {} s, once)",
                r["valid_secs"]
            );
        }
        PairAction::Join { code } => {
            let code = read_code(&code)?;
            let r = client
                .post("/pair/join", json!({"code": code}))
                .await
                .map_err(call)?;
            let peer = &r["paired_with"];
            println!(
                "paired with {} (server {}, certificate {})",
                peer["instance"].as_str().unwrap_or("-"),
                peer["server"].as_str().unwrap_or("-"),
                peer["fingerprint"].as_str().unwrap_or("-")
            );
        }
        PairAction::Status { json } => {
            let r = client.get("/pair").await.map_err(call)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON prints"));
            } else {
                print!("{}", render_pair(&r));
            }
        }
        PairAction::Conflicts { json, action } => {
            let r = match action {
                None => client.get("/pair/conflicts").await.map_err(call)?,
                Some(ConflictsAction::Apply { id }) => client
                    .post(&format!("/pair/conflicts/{id}/apply"), json!({}))
                    .await
                    .map_err(call)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON prints"));
            } else if let Some(all) = r["conflicts"].as_array() {
                print!("{}", render_conflicts(all));
            } else {
                println!(
                    "conflict {} ({} {}) re-applied as version {}",
                    r["conflict"].as_str().unwrap_or("-"),
                    r["kind"].as_str().unwrap_or("-"),
                    r["name"].as_str().unwrap_or("-"),
                    r["applied_as"].as_str().unwrap_or("-")
                );
            }
        }
        PairAction::Events { json, limit } => {
            let r = client
                .get(&format!("/pair/events?limit={limit}"))
                .await
                .map_err(call)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON prints"));
            } else {
                print!(
                    "{}",
                    render_events(r["events"].as_array().map_or(&[][..], |v| v))
                );
            }
        }
        PairAction::Unpair { force: _ } => {
            client.post("/pair/unpair", json!({})).await.map_err(call)?;
            println!("unpaired: this server no longer talks to its peer");
        }
    }
    Ok(0)
}
