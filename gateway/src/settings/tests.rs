//! Tests of settings loading: layering, environment overrides and the
//! messages that name a bad key.

use super::*;

fn no_env() -> Env {
    Env::none()
}

fn load_text(text: &str, instance: Option<&str>, env: &Env) -> Result<Settings, SettingsError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    load(Source::File(&path), instance, env)
}

const SHARED: &str = r#"
[defaults]
data_dir = "/srv/scan/{instance}"
workers = 3
time_zone = "Europe/Berlin"

[instances.gw-a]
listen = "127.0.0.1:9443"

[instances.gw-b]
listen = "127.0.0.1:9444"
listen_plain = "127.0.0.1:9080"
workers = 7

[limits]
max_job_bytes = "100MiB"
max_pages = 20
max_page_bytes = "10 MB"
"#;

#[test]
fn embedded_defaults_load() {
    let s = load(Source::Embedded, None, &no_env()).unwrap();
    assert_eq!(s.instance.name.as_str(), "gw1");
    assert_eq!(
        s.instance.data_dir,
        std::env::current_dir().unwrap().join("gateway-data/gw1")
    );
    assert_eq!(s.instance.listeners[0].addr.port(), 8443);
    assert_eq!(s.instance.tls, TlsSource::SelfSigned);
    assert!(s.site.workflows.contains_key("scan-to-folder"));
    assert!(s.site.users.is_empty());
}

#[test]
fn one_file_serves_several_instances() {
    let a = load_text(SHARED, Some("gw-a"), &no_env()).unwrap();
    let b = load_text(SHARED, Some("gw-b"), &no_env()).unwrap();
    assert_eq!(a.instance.data_dir, PathBuf::from("/srv/scan/gw-a"));
    assert_eq!(b.instance.data_dir, PathBuf::from("/srv/scan/gw-b"));
    assert_eq!(a.instance.workers, 3, "from [defaults]");
    assert_eq!(b.instance.workers, 7, "instance table wins over [defaults]");
    assert_eq!(b.instance.listeners.len(), 2);
    assert_eq!(b.instance.listeners[1].kind, ListenerKind::Plain);
    assert_eq!(a.instance.time_zone, chrono_tz::Europe::Berlin);
    assert_eq!(a.site, b.site, "site configuration is shared");
    assert_eq!(a.site.limits.max_job_bytes, 100 << 20);
    assert_eq!(a.site.limits.max_page_bytes, 10_000_000);
}

#[test]
fn instance_must_be_named_when_several_exist() {
    let err = load_text(SHARED, None, &no_env()).unwrap_err().to_string();
    assert!(err.contains("choose one with --instance"), "{err}");
    assert!(err.contains("gw-a, gw-b"), "{err}");
    let err = load_text(SHARED, Some("gw-c"), &no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("instance `gw-c` is not in"), "{err}");
}

#[test]
fn environment_overrides_a_single_setting_and_is_named_in_errors() {
    let env = Env::from_pairs([("SCANGW_WORKERS", "11")]);
    assert_eq!(
        load_text(SHARED, Some("gw-b"), &env)
            .unwrap()
            .instance
            .workers,
        11
    );
    let env = Env::from_pairs([("SCANGW_WORKERS", "many")]);
    let err = load_text(SHARED, Some("gw-b"), &env)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "environment variable SCANGW_WORKERS: `many` is not a whole number"
    );
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "[instances.x]\nlisten = \"nowhere\"",
            "instances.x.listen: `nowhere` is not an address:port",
        ),
        (
            "[instances.x]\nlisten_plain = \"0.0.0.0:80\"",
            "instances.x.listen_plain: plain HTTP is only allowed on a loopback address",
        ),
        (
            "[instances.x]\ntime_zone = \"Mars/Olympus\"",
            "instances.x.time_zone: `Mars/Olympus` is not an IANA time zone",
        ),
        (
            "[instances.x]\ntls_cert = \"c.pem\"",
            "instances.x.tls_cert: tls_cert is set but tls_key is not",
        ),
        (
            "[defaults]\nworkers = 0",
            "defaults.workers: 0 is out of range",
        ),
        (
            "[instances.x]\nlog_format = \"xml\"",
            "instances.x.log_format: `xml` is not a log format",
        ),
        (
            "[limits]\nmax_page_bytes = \"2GiB\"",
            "limits.max_page_bytes: 2 GiB is larger than limits.max_job_bytes (512 MiB)",
        ),
        (
            "[users.alice]\npassword_hash = \"hunter2\"",
            "users.alice.password_hash: expected `pbkdf2-sha256$",
        ),
        (
            "[users.\"a b\"]\npassword_hash = \"x\"",
            "users.a b: `a b` is not a valid user name",
        ),
        (
            "[instances.Big]\n",
            "instances.Big: `Big` is not a valid instance name",
        ),
        (
            "[workflows.\"a/b\"]\nsteps = []",
            "workflows.a/b: `a/b` is not a valid workflow name",
        ),
        (
            "[licensing]\ntrusted_vendor_keys = [\"zz\"]",
            "licensing.trusted_vendor_keys[0]:",
        ),
    ];
    for (text, expected) in cases {
        let instance = if text.contains("[instances.x]") {
            Some("x")
        } else {
            None
        };
        let err = load_text(text, instance, &no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(expected),
            "for {text:?}\n got: {err}\nwant: {expected}"
        );
    }
}

#[test]
fn unknown_keys_and_syntax_errors_point_at_the_line() {
    let err = load_text("[defaults]\nlisen = \"127.0.0.1:1\"\n", None, &no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `lisen`"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    let err = load_text("[defaults\n", None, &no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not valid"), "{err}");
}

#[test]
fn missing_file_says_what_to_check() {
    let err = load(
        Source::File(Path::new("/nonexistent/gw.toml")),
        None,
        &no_env(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("check the path given to --config"), "{err}");
}

#[test]
fn byte_sizes_parse_with_units() {
    assert_eq!(ByteSize::parse("20MiB").unwrap().0, 20 << 20);
    assert_eq!(ByteSize::parse("1.5 GB").unwrap().0, 1_500_000_000);
    assert_eq!(ByteSize::parse("512").unwrap().0, 512);
    assert!(
        ByteSize::parse("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit")
    );
    assert!(ByteSize::parse("lots").is_err());
    assert!(ByteSize::parse("0").is_err());
    assert_eq!(ByteSize(64 << 20).to_string(), "64 MiB");
}

// Regression: `workers = 1.5` was refused with "data did not match any
// variant of untagged enum TomlScalar", naming neither key nor type.
#[test]
fn type_errors_name_the_key_and_the_expected_type() {
    let cases = [
        (
            "[defaults]\nworkers = 1.5",
            "defaults.workers: expected a whole number, found the decimal number 1.5",
        ),
        (
            "[defaults]\nstep_timeout_secs = \"soon\"",
            "defaults.step_timeout_secs: `soon` is not a whole number",
        ),
        (
            "[defaults]\nlisten = 8443",
            "defaults.listen: expected a string (in quotes), found the whole number 8443",
        ),
        (
            "[defaults]\ndata_dir = [\"a\"]",
            "defaults.data_dir: expected a string (in quotes), found an array",
        ),
        (
            "[defaults]\nlog_format = true",
            "defaults.log_format: expected a string (in quotes), found the boolean true",
        ),
        (
            "[limits]\nmax_pages = \"many\"",
            "limits.max_pages: `many` is not a whole number",
        ),
        (
            "[sessions]\nttl_secs = 1.5",
            "sessions.ttl_secs: expected a whole number, found the decimal number 1.5",
        ),
        (
            "[limits]\nmax_job_bytes = true",
            "limits.max_job_bytes: expected a size such as 20MiB or 1048576, found the boolean true (line 2 of ",
        ),
        (
            "\n[users.alice]\npassword_hash = 5",
            "users.alice.password_hash: invalid type: integer `5`, expected a string (line 3 of ",
        ),
    ];
    for (text, expected) in cases {
        let err = load_text(text, None, &no_env()).unwrap_err().to_string();
        assert!(
            err.starts_with(expected),
            "for {text:?}\n got: {err}\nwant: {expected}"
        );
    }
}

// Regression: the documented SCANGW_LOGIN_FAILURES_PER_MINUTE and
// SCANGW_MAINTENANCE_RETRY_AFTER_SECS were silently ignored.
#[test]
fn every_instance_setting_has_an_environment_variable_that_overrides_it() {
    let env = Env::from_pairs([
        ("SCANGW_LOGIN_FAILURES_PER_MINUTE", "3"),
        ("SCANGW_MAINTENANCE_RETRY_AFTER_SECS", "7"),
        ("SCANGW_STEP_TIMEOUT_SECS", "9"),
        ("SCANGW_LOG_FORMAT", "json"),
    ]);
    let s = load_text(SHARED, Some("gw-a"), &env).unwrap();
    assert_eq!(s.instance.login_failures_per_minute, 3);
    assert_eq!(s.instance.maintenance_retry_after_secs, 7);
    assert_eq!(s.instance.step_timeout, Duration::from_secs(9));
    assert_eq!(s.instance.log_format, LogFormat::Json);

    // Every key of the instance table has its variable, named after it.
    let keys = [
        "data_dir",
        "listen",
        "listen_plain",
        "listen_proxy",
        "tls_cert",
        "tls_key",
        "workers",
        "time_zone",
        "log_format",
        "log_level",
        "tesseract",
        "ocr_parallelism",
        "max_attempts",
        "max_uploads_in_flight",
        "upload_slot_wait_ms",
        "step_timeout_secs",
        "maintenance_retry_after_secs",
        "login_failures_per_minute",
    ];
    for key in keys {
        let var = format!("SCANGW_{}", key.to_ascii_uppercase());
        assert!(
            ENV_VARS.contains(&(var.as_str(), EnvTarget::Instance(key))),
            "{key} has no {var}"
        );
        // The file rejects a key it does not know, so this also proves the
        // list above is the whole instance table.
        let text = format!("[defaults]\n{key} = \"x\"\n");
        let err = load_text(&text, None, &no_env())
            .err()
            .map(|e| e.to_string());
        assert!(
            !err.unwrap_or_default().contains("unknown field"),
            "{key} is not an instance setting"
        );
    }
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    for (var, _) in ENV_VARS {
        assert!(
            docs.contains(var),
            "docs/configuration.md does not list {var}"
        );
    }
}

#[test]
fn unknown_or_unparsable_environment_variables_are_errors_naming_them() {
    let err = load_text(
        SHARED,
        Some("gw-a"),
        &Env::from_pairs([("SCANGW_WORKER", "4")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("environment variable SCANGW_WORKER: is not a setting of the gateway"),
        "{err}"
    );
    let err = load_text(
        SHARED,
        Some("gw-a"),
        &Env::from_pairs([("SCANGW_LOGIN_FAILURES_PER_MINUTE", "ten")]),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "environment variable SCANGW_LOGIN_FAILURES_PER_MINUTE: `ten` is not a whole number"
    );
    // Read by the command line, so known here.
    let env = Env::from_pairs([("SCANGW_CONFIG", "/x.toml"), ("SCANGW_INSTANCE", "gw-a")]);
    load_text(SHARED, Some("gw-a"), &env).unwrap();
}
