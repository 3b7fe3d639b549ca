//! `license-tool`: the vendor's command line to create vendor keys and to issue and inspect license keys. The only part of the crate that reads or writes files or looks at the clock; all key logic stays in the library.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{NaiveDate, Utc};
use clap::{Parser, Subcommand};
use licensing::{
    KeySpec, LicenseKey, MAX_SERIAL, Role, TrustedKeys, VendorKeyPair, VendorPublicKey,
};

#[derive(Parser)]
#[command(
    name = "license-tool",
    version,
    about = "Create vendor keys, and issue and inspect scan gateway license keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a vendor key pair: DIR/vendor.key (private, keep it secret) and DIR/vendor.pub.
    Keygen {
        /// Directory to write the two files to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a license key signed with a vendor private key.
    Issue {
        /// The vendor.key file written by `keygen`.
        #[arg(long, value_name = "FILE")]
        vendor_key: PathBuf,
        /// 03 or primary, 04 or secondary.
        #[arg(long, value_parser = Role::from_str)]
        role: Role,
        /// Serial number, 0 to 9999999.
        #[arg(long, value_parser = parse_serial)]
        serial: u32,
        /// Number of devices the server may serve.
        #[arg(long, default_value_t = 1, value_parser = parse_seats)]
        seats: u16,
        /// Last valid day; without it the key never expires.
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
        expires: Option<NaiveDate>,
    },
    /// Verify a license key and show what it grants.
    Inspect {
        /// The license key, as given to the customer (quote it if it has spaces).
        key: String,
        /// A trusted vendor public key file (vendor.pub); repeat for several.
        /// Without it, the product's built-in vendor key is trusted.
        #[arg(long = "vendor-pub", value_name = "FILE")]
        vendor_pub: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Check expiry against this day instead of today.
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
        today: Option<NaiveDate>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Issue {
            vendor_key,
            role,
            serial,
            seats,
            expires,
        } => issue(
            &vendor_key,
            &KeySpec {
                role,
                serial,
                seats,
                expires,
            },
        ),
        Command::Inspect {
            key,
            vendor_pub,
            json,
            today,
        } => inspect(&key, &vendor_pub, json, today),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create directory {}; check the path and its permissions",
            dir.display()
        )
    })?;
    let key_path = dir.join("vendor.key");
    let pub_path = dir.join("vendor.pub");
    // Both files are checked before either is written, so a refused run
    // never leaves a private key beside a public key it does not match.
    for path in [&key_path, &pub_path] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a vendor key (whoever issued keys with it still needs it): choose another --out directory",
                path.display()
            );
        }
    }
    let (pair, pkcs8) = VendorKeyPair::generate().context("cannot generate a vendor key pair")?;
    write_new(&key_path, &format!("{}\n", BASE64.encode(&pkcs8)), 0o600)?;
    write_new(
        &pub_path,
        &format!("{}\n", pair.public_key().to_text()),
        0o644,
    )?;
    println!(
        "private key: {} (keep it secret: whoever holds it can issue licenses)",
        key_path.display()
    );
    println!("public key:  {}", pub_path.display());
    println!("key id:      {}", pair.public_key().id());
    Ok(())
}

/// Creates `path` (never replacing an existing file) with `mode` on Unix.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| {
        format!(
            "cannot create {}; check that the directory is writable",
            path.display()
        )
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}; check free disk space", path.display()))
}

fn issue(vendor_key: &Path, spec: &KeySpec) -> Result<()> {
    let text = fs::read_to_string(vendor_key).with_context(|| {
        format!(
            "cannot read vendor private key {}; pass the vendor.key written by `license-tool keygen`",
            vendor_key.display()
        )
    })?;
    let pkcs8 = BASE64.decode(text.trim()).with_context(|| {
        format!(
            "{} is not a vendor private key (expected base64 text); pass the vendor.key written by `license-tool keygen`",
            vendor_key.display()
        )
    })?;
    let pair = VendorKeyPair::from_pkcs8(&pkcs8)
        .with_context(|| format!("cannot load vendor private key {}", vendor_key.display()))?;
    println!("{}", pair.issue(spec)?);
    Ok(())
}

fn inspect(key: &str, vendor_pub: &[PathBuf], json: bool, today: Option<NaiveDate>) -> Result<()> {
    let trusted = if vendor_pub.is_empty() {
        TrustedKeys::builtin()
    } else {
        vendor_pub
            .iter()
            .map(|path| read_public_key(path))
            .collect::<Result<TrustedKeys>>()?
    };
    let today = today.unwrap_or_else(|| Utc::now().date_naive());
    let key = licensing::verify(key, &trusted, today).context("license key rejected")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&describe(&key))?);
    } else {
        println!("license key valid on {today}");
        println!("  key:      {}", key.text());
        println!("  product:  {}", key.product());
        println!("  role:     {} ({})", key.role(), key.role().code());
        println!("  serial:   {:07}", key.serial());
        println!("  seats:    {}", key.seats());
        match key.expires() {
            Some(on) => println!("  expires:  {on} (valid through that day)"),
            None => println!("  expires:  never"),
        }
        println!("  signed by vendor key {}", key.vendor_key_id());
    }
    Ok(())
}

fn describe(key: &LicenseKey) -> serde_json::Value {
    serde_json::json!({
        "key": key.text(),
        "product": key.product(),
        "role": key.role(),
        "role_code": key.role().code(),
        "serial": key.serial(),
        "seats": key.seats(),
        "expires": key.expires(),
        "vendor_key_id": key.vendor_key_id(),
    })
}

fn read_public_key(path: &Path) -> Result<VendorPublicKey> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read vendor public key {}; pass a vendor.pub file",
            path.display()
        )
    })?;
    VendorPublicKey::from_text(&text).with_context(|| format!("cannot use {}", path.display()))
}

fn parse_serial(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|&n| n <= MAX_SERIAL)
        .ok_or_else(|| format!("the serial must be a whole number from 0 to {MAX_SERIAL} (it is printed as 7 digits)"))
}

fn parse_seats(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("seats must be a whole number from 1 to {}", u16::MAX))
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| format!("expected a date as YYYY-MM-DD, e.g. 2027-12-31 ({e})"))
}
