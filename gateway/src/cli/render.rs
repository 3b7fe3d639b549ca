//! Human-readable output of the admin commands (status, license, schema),
//! built from the same JSON the `--json` forms print.

use serde_json::Value;

pub fn render_role(role: &Value) -> String {
    let mut out = format!(
        "role:        {} (epoch {})\n",
        role["role"].as_str().unwrap_or("?"),
        role["epoch"].as_u64().unwrap_or(0)
    );
    match role.get("license").filter(|l| !l.is_null()) {
        Some(l) => {
            out += &format!(
                "license:     serial {:07}, role {}, {} device seats, {}\n",
                l["serial"].as_u64().unwrap_or(0),
                l["role_code"].as_str().unwrap_or("?"),
                l["seats"].as_u64().unwrap_or(0),
                l["expires"]
                    .as_str()
                    .map_or("no expiry".to_owned(), |d| format!("expires {d}"))
            );
        }
        None => out += "license:     none\n",
    }
    if let Some(p) = role["license_problem"].as_str() {
        out += &format!("problem:     {p}\n");
    }
    out
}

/// The human form of `gateway status`.
pub fn render_status(s: &Value) -> String {
    let mut out = format!(
        "instance {} (version {}, pid {})\n",
        s["instance"].as_str().unwrap_or("?"),
        s["version"].as_str().unwrap_or("?"),
        s["pid"]
    );
    out += &render_role(&s["role"]);
    let listeners: Vec<String> = s["web"]["listeners"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    format!(
                        "{} {}",
                        l["kind"].as_str().unwrap_or("?"),
                        l["addr"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out += &format!(
        "web:         {} ({})\n",
        if s["web"]["up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        },
        listeners.join(", ")
    );
    out += &format!(
        "data:        {}{}\n",
        if s["data"]["up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        },
        match (s["data"]["detail"].as_str(), s["data"]["reason"].as_str()) {
            (Some(d), _) => format!(" ({d})"),
            (None, Some("stopped")) => {
                " (stopped by an admin; `gateway service start data` starts it)".to_owned()
            }
            (None, Some("shutting_down")) => " (the instance is shutting down)".to_owned(),
            _ => String::new(),
        }
    );
    out += &format!(
        "maintenance: {}\n",
        if s["maintenance"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }
    );
    if s["pipeline_paused"].as_bool() == Some(true) {
        out += "pipeline:    paused (accepted jobs wait; `gateway pipeline resume`)\n";
    }
    out += &format!(
        "accepting:   {}\n",
        if s["accepting"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    );
    out += &format!(
        "queue:       {} waiting or processing, {} failed\n",
        s["queue_depth"]
            .as_u64()
            .map_or("?".into(), |n| n.to_string()),
        s["failed_jobs"]
            .as_u64()
            .map_or("?".into(), |n| n.to_string())
    );
    if let Some(c) = s.get("config").filter(|c| !c.is_null()) {
        let names: Vec<&str> = c["workflows"]
            .as_array()
            .map(|w| w.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out += &format!(
            "config:      version {} (epoch {}), workflows: {}, {} users\n",
            c["version"],
            c["epoch"],
            names.join(", "),
            c["users"]
        );
    }
    for cap in s["capabilities"].as_array().into_iter().flatten() {
        out += &format!(
            "capability:  {} {} ({})\n",
            cap["name"].as_str().unwrap_or("?"),
            if cap["available"].as_bool() == Some(true) {
                "available"
            } else {
                "absent"
            },
            cap["detail"].as_str().unwrap_or("")
        );
    }
    out += &format!(
        "ocr runs on: {}\n",
        s["ocr_runs_on"]
            .as_str()
            .unwrap_or("nowhere: install tesseract-ocr here or on the paired server")
    );
    if !s["pair"].is_null() {
        out += &super::pair::render_pair(&s["pair"]);
    }
    out
}

/// The human form of `gateway db schema`.
/// The result of `gateway config apply` for people: the diff, then what
/// happened.
pub fn apply_result(r: &Value) -> String {
    let mut out = String::new();
    let diff = r["diff"].as_array().cloned().unwrap_or_default();
    if diff.is_empty() {
        out += "no changes: the file is the running configuration\n";
        return out;
    }
    for line in &diff {
        out += line.as_str().unwrap_or_default();
        out.push('\n');
    }
    if r["dry_run"] == Value::Bool(true) {
        out += &format!(
            "dry run: {} change(s) not applied (running version {})\n",
            diff.len(),
            r["version"]
        );
    } else {
        out += &format!(
            "applied as version {} (epoch {})\n",
            r["version"],
            r["epoch"].as_str().unwrap_or("-")
        );
    }
    out
}

pub fn render_schema(tables: &[crate::store::TableInfo]) -> String {
    let mut out = String::new();
    for t in tables {
        out += &format!("{}\n", t.name);
        for c in &t.columns {
            let mut flags = Vec::new();
            if c.primary_key {
                flags.push("primary key");
            }
            if c.not_null {
                flags.push("not null");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(", "))
            };
            out += &format!("  {} {}{}\n", c.name, c.decl_type, flags);
        }
    }
    out
}
