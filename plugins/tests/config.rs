//! Workflow configuration as admins write it: what is refused and the exact
//! message they read; the capabilities a server reports; and the folder
//! name rules under arbitrary values from outside.

mod common;

use std::path::{Component, Path};

use plugins::deliver::name::{MAX_VALUE_BYTES, NameTemplate, sanitise};
use plugins::{Registry, RegistrySettings, WorkflowSpec};
use proptest::prelude::*;

fn spec(toml_text: &str) -> WorkflowSpec {
    toml::from_str(toml_text).unwrap()
}

/// A registry whose OCR engine is the fake that answers the probes like
/// tesseract with English only, so these tests need no engine installed.
async fn registry(dir: &Path) -> Registry {
    let engine = common::hung_engine(dir, &dir.join("pids"));
    Registry::detect(RegistrySettings {
        tesseract_path: engine,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn refused_workflows_name_the_workflow_step_and_key() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = registry(scratch.path()).await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "scan-to-mail",
            r#"
            [[steps]]
            plugin = "assemble"
            [[steps]]
            plugin = "mail"
            host = "mail.example.org"
            tls_mode = "starttls"
            from = "s@example.org"
            to = ["a@example.org"]
            "#,
            "workflow `scan-to-mail`, step 2 (`mail`): unknown setting `tls_mode`; expected one of \
             `host`, `port`, `tls`, `username`, `password`, `ca_file`, `from`, `to`, `subject`, `timeout_secs`",
        ),
        (
            "scan-to-fax",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"fax\"",
            "workflow `scan-to-fax`, step 2: unknown plugin `fax`; expected one of \
             `ocr`, `assemble`, `folder`, `mail`, `webhook`",
        ),
        (
            "bad-port",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"mail\"\nhost = \"h\"\nport = \"smtp\"\n\
             from = \"s@example.org\"\nto = [\"a@example.org\"]",
            "workflow `bad-port`, step 2 (`mail`): setting `port`: invalid type: string \"smtp\", expected u16",
        ),
        (
            "bad-tls",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"mail\"\nhost = \"h\"\ntls = \"ssl\"\n\
             from = \"s@example.org\"\nto = [\"a@example.org\"]",
            "workflow `bad-tls`, step 2 (`mail`): setting `tls`: unknown variant `ssl`, \
             expected one of `none`, `starttls`, `implicit`",
        ),
        (
            "no-host",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"mail\"\nfrom = \"s@example.org\"\nto = [\"a@example.org\"]",
            "workflow `no-host`, step 2 (`mail`): missing setting `host`",
        ),
        (
            "early-delivery",
            "[[steps]]\nplugin = \"folder\"\nroot = \"/srv/scans\"\n[[steps]]\nplugin = \"assemble\"",
            "workflow `early-delivery`, step 1 (`folder`): `folder` delivers the assembled document, \
             but no earlier step produces it; put an `assemble` step before it",
        ),
        (
            "late-ocr",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"ocr\"",
            "workflow `late-ocr`, step 2 (`ocr`): `ocr` must come before `assemble`, \
             which builds the document from the recognised pages",
        ),
        (
            "french",
            "[[steps]]\nplugin = \"ocr\"\nlanguages = [\"eng\", \"fra\"]",
            "workflow `french`, step 1 (`ocr`): setting `languages`: language `fra` is not installed for \
             the OCR engine on this server (installed: eng); install tesseract-ocr-fra",
        ),
        (
            "languages-not-a-list",
            "[[steps]]\nplugin = \"ocr\"\nlanguages = \"eng\"",
            "workflow `languages-not-a-list`, step 1 (`ocr`): setting `languages`: \
             invalid type: string \"eng\", expected a sequence",
        ),
        (
            "relative-root",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"folder\"\nroot = \"scans\"",
            "workflow `relative-root`, step 2 (`folder`): setting `root`: must be an absolute path",
        ),
        (
            "no-job-id",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"folder\"\nroot = \"/srv\"\nname = \"{user}.pdf\"",
            "workflow `no-job-id`, step 2 (`folder`): setting `name`: must contain {job_id}, so that every job \
             gets its own name and a repeated delivery finds its own file there (it is never written twice)",
        ),
        (
            "zero-timeout",
            "[[steps]]\nplugin = \"assemble\"\ntimeout_secs = 0",
            "workflow `zero-timeout`, step 1 (`assemble`): setting `timeout_secs`: must be at least 1 second",
        ),
        (
            "clear-password",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"mail\"\nhost = \"h\"\ntls = \"none\"\n\
             username = \"u\"\npassword = \"p\"\nfrom = \"s@example.org\"\nto = [\"a@example.org\"]",
            "workflow `clear-password`, step 2 (`mail`): setting `tls`: `none` would send the password in \
             clear text; use `starttls` or `implicit`",
        ),
        (
            "webhook-scheme",
            "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"webhook\"\nurl = \"ftp://h/x\"\nsecret = \"s\"",
            "workflow `webhook-scheme`, step 2 (`webhook`): setting `url`: must start with http:// or https://",
        ),
        (
            "empty",
            "steps = []",
            "workflow `empty`: has no steps; add at least one (e.g. `assemble` then `folder`)",
        ),
    ];
    for (name, text, expected) in cases {
        let err = registry.build_workflow(name, &spec(text)).unwrap_err();
        assert_eq!(err.to_string(), *expected);
    }
}

/// Index fields are checked when the workflow is built; every refusal
/// names the workflow and the field and says what to do.
#[test]
fn refused_index_fields_name_the_workflow_and_the_field() {
    let registry = Registry::without_engines();
    let steps = "steps = [{ plugin = \"assemble\" }, { plugin = \"folder\", root = \"/srv\" }]\n";
    let cases: &[(&str, &str)] = &[
        (
            "[[fields]]\nname = \"po\"\nlabel = \"PO\"\ntype = \"string\"",
            "workflow `invoices`: index field `po`: unknown type `string`; use text, number, choice or date",
        ),
        (
            "[[fields]]\nname = \"po\"\nlabel = \"PO\"\ntype = \"text\"\nchoices = [\"A\"]",
            "workflow `invoices`: index field `po`: `choices` is only for `choice` fields, and this one is `text`; \
             remove `choices` or make the type `choice`",
        ),
        (
            "[[fields]]\nname = \"dept\"\nlabel = \"Department\"\ntype = \"choice\"",
            "workflow `invoices`: index field `dept`: a `choice` field needs `choices`, a non-empty list of the values to pick from",
        ),
        (
            "[[fields]]\nname = \"dept\"\nlabel = \"Department\"\ntype = \"choice\"\nchoices = []",
            "workflow `invoices`: index field `dept`: a `choice` field needs `choices`, a non-empty list of the values to pick from",
        ),
        (
            "[[fields]]\nname = \"dept\"\nlabel = \"Department\"\ntype = \"choice\"\nchoices = [\"A\", \"A\"]",
            "workflow `invoices`: index field `dept`: the choice `A` is listed twice; list each choice once",
        ),
        (
            "[[fields]]\nname = \"due\"\nlabel = \"Due\"\ntype = \"date\"\npattern = \"[0-9]+\"",
            "workflow `invoices`: index field `due`: `pattern` is only for `text` fields, and this one is `date`; \
             remove `pattern` or make the type `text`",
        ),
        (
            "[[fields]]\nname = \"po\"\nlabel = \"PO\"\ntype = \"text\"\n\
             [[fields]]\nname = \"po\"\nlabel = \"PO again\"\ntype = \"text\"",
            "workflow `invoices`: index field `po`: is declared twice; give each field of a workflow its own name",
        ),
        (
            "[[fields]]\nname = \"po\"\nlabel = \"PO\"\ntype = \"text\"\npattern = \"[0-9]{6\"",
            "workflow `invoices`: index field `po`: the pattern `[0-9]{6` is not valid: `{` must start a \
             repetition `{n}`, `{n,}` or `{n,m}` (digits only); write `\\{` for the character",
        ),
        (
            "[[fields]]\nname = \"po\"\nlabel = \"PO\"\ntype = \"text\"\npattern = '(?i)inv[0-9]+'",
            "workflow `invoices`: index field `po`: the pattern `(?i)inv[0-9]+` is not valid: `(?` is only allowed \
             as the non-capturing group `(?:`; flags, look-around and named groups are not portable",
        ),
        (
            "[[fields]]\nname = \"po\"\nlabel = \"PO\"\ntype = \"text\"\npattern = '(ab'",
            "workflow `invoices`: index field `po`: the pattern `(ab` is not valid: unclosed group",
        ),
        (
            "[[fields]]\nname = \"po number\"\nlabel = \"PO\"\ntype = \"text\"",
            "workflow `invoices`: index field #1: `po number` is not a valid field name: the name is the metadata \
             key, so use 1-64 letters, digits and _ . -, starting with a letter or digit",
        ),
        (
            "[[fields]]\nname = \"po\"\nlabel = \"\"\ntype = \"text\"",
            "workflow `invoices`: index field `po`: the label must be 1-64 characters without control characters \
             (line breaks, tabs)",
        ),
    ];
    for (fields, expected) in cases {
        let invoices = spec(&format!("{steps}{fields}"));
        let err = registry.build_workflow("invoices", &invoices).unwrap_err();
        assert_eq!(err.to_string(), *expected, "for\n{fields}");
    }
}

#[test]
fn a_workflow_carries_its_index_fields_in_order() {
    let registry = Registry::without_engines();
    let invoices = spec(
        r#"
        steps = [{ plugin = "assemble" }, { plugin = "folder", root = "/srv" }]

        [[fields]]
        name = "po_number"
        label = "PO number"
        type = "text"
        required = true
        pattern = "[0-9]{6}"

        [[fields]]
        name = "dept"
        label = "Department"
        type = "choice"
        choices = ["Sales", "Legal"]
        "#,
    );
    let workflow = registry.build_workflow("invoices", &invoices).unwrap();
    let names: Vec<&str> = workflow.fields().iter().map(|f| f.name()).collect();
    assert_eq!(names, ["po_number", "dept"]);
    assert_eq!(workflow.fields()[0].pattern(), Some("[0-9]{6}"));
    assert!(workflow.fields()[0].required());
    assert_eq!(workflow.fields()[1].choices(), ["Sales", "Legal"]);

    // A workflow without fields has none, and its specification writes
    // back without a `fields` key.
    let plain = spec("steps = [{ plugin = \"assemble\" }]");
    assert!(plain.fields.is_empty());
    assert!(!serde_json::to_string(&plain).unwrap().contains("fields"));
    let workflow = registry.build_workflow("plain", &plain).unwrap();
    assert!(workflow.fields().is_empty());
}

#[tokio::test]
async fn a_valid_workflow_lists_its_steps_and_needs() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = registry(scratch.path()).await;
    let workflow = registry
        .build_workflow(
            "scan-to-folder",
            &spec("[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"folder\"\nroot = \"/srv/scans\""),
        )
        .unwrap();
    assert_eq!(workflow.name(), "scan-to-folder");
    assert_eq!(workflow.steps(), vec!["assemble", "folder"]);
    assert!(!workflow.needs_ocr());
}

#[tokio::test]
async fn capabilities_report_the_real_engine_and_its_languages() {
    common::require_tesseract();
    let registry = Registry::detect(RegistrySettings::default()).await;
    let capabilities = registry.capabilities();
    let ocr = &capabilities[0];
    assert_eq!(ocr.name, "ocr");
    assert!(ocr.available, "{ocr:?}");
    assert!(ocr.detail.starts_with("tesseract "), "{}", ocr.detail);
    assert!(
        ocr.detail.contains("; languages ") && ocr.detail.contains("eng"),
        "{}",
        ocr.detail
    );
    let json = serde_json::to_value(&capabilities).unwrap();
    assert_eq!(json[0]["name"], "ocr");
    assert_eq!(json[0]["available"], true);
    let names: Vec<&str> = capabilities.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "ocr",
            "pdf-rasterise",
            "assemble",
            "folder",
            "mail",
            "webhook"
        ]
    );
}

fn job_with(user: String, device: String, meta: String) -> plugins::JobContext {
    let mut job = common::job(Path::new("/tmp/unused"), Vec::new());
    job.user = user;
    job.device = device;
    job.metadata.insert("dept".into(), meta);
    job
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a device or user sends, the name stays under the root, is
    /// made of ordinary components, and is the same every time.
    #[test]
    fn rendered_names_never_escape_the_root(
        user in any::<String>(),
        device in "(\\PC|/|\\.|\\\\){0,80}",
        meta in prop_oneof![any::<String>(), Just("..".to_string()), Just("/etc/passwd".to_string())],
        template in prop_oneof![
            Just("{date}/{user}-{job_id}.pdf"),
            Just("{meta.dept}/{device}/{user}{job_id}"),
            Just("{user}/{meta.dept}/{meta.missing}/{time}-{job_id}.pdf"),
        ],
    ) {
        let template = NameTemplate::path(template).unwrap();
        let job = job_with(user, device, meta);
        let path = template.render_path(&job);
        prop_assert_eq!(&path, &template.render_path(&job));
        prop_assert!(path.is_relative());
        let root = Path::new("/srv/scans");
        prop_assert!(root.join(&path).starts_with(root));
        for component in path.components() {
            let Component::Normal(part) = component else {
                return Err(TestCaseError::fail(format!("{component:?} in {path:?}")));
            };
            let part = part.to_str().unwrap();
            prop_assert!(!part.is_empty() && part != "." && part != "..");
            prop_assert!(part.len() <= 255, "{} bytes", part.len());
            prop_assert!(!part.chars().any(|c| c.is_control() || c == '\\'));
            prop_assert!(!part.starts_with('.'));
        }
    }

    /// A single value never holds a separator, a leading dot or more than
    /// the byte limit, and is never empty.
    #[test]
    fn sanitised_values_are_single_safe_components(value in any::<String>()) {
        let clean = sanitise(&value);
        prop_assert!(!clean.is_empty() && clean.len() <= MAX_VALUE_BYTES);
        prop_assert!(!clean.contains('/') && !clean.contains('\\') && !clean.starts_with('.'));
        prop_assert!(!clean.chars().any(char::is_control));
    }
}
