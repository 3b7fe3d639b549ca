//! `gateway pair ...`: pairing two running servers and showing the link.
//! Every pair command talks to the running instance; the pair link lives
//! in the server process.

use serde_json::{Value, json};

use super::{CodeInput, PairAction};
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
    out
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
        PairAction::Unpair { force: _ } => {
            client.post("/pair/unpair", json!({})).await.map_err(call)?;
            println!("unpaired: this server no longer talks to its peer");
        }
    }
    Ok(0)
}
