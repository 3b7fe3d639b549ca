//! Property tests of every gateway parser of outside input, at the entry
//! points the fuzz targets in `fuzz/` drive: the job manifest, the PROXY
//! protocol header, the configuration file, the pair link's frames, the
//! pairing code and the multipart upload stream of the intake. Each takes
//! arbitrary input and damaged valid input and must answer with a value or
//! an error, never a panic; valid input round-trips where there is a way
//! back (canonical manifest, header encode/parse, frame encode/decode, code
//! text/parse).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use gateway::admin::ops;
use gateway::core::Core;
use gateway::manifest::Manifest;
use gateway::pair::frame;
use gateway::pair::pairing::{JoinAnswer, JoinRequest, PairingCode};
use gateway::pair::wire::{JobOffer, OfferedPage, PageAnswer, Wire};
use gateway::peer_ack::EndedSession;
use gateway::proxy_protocol::{self, ProxyHeader};
use gateway::security::PasswordHash;
use gateway::security::passwords::MIN_ITERATIONS;
use gateway::settings::{self, Env, Source};
use gateway::store::job_owners::TakenJob;
use http_body_util::BodyExt;
use licensing::{KeySpec, Role, TrustedKeys, VendorKeyPair};
use pair_core::{Body as MessageBody, ConfigChange, ConfigStamp, Epoch, Hello, Message, ServerId};
use proptest::prelude::*;
use tower::ServiceExt;
use uuid::Uuid;

/// A byte-level change to a valid input.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<usize>().prop_map(Damage::Remove),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Damage::Duplicate(i, n)),
    ]
}

fn arb_damages() -> impl Strategy<Value = Vec<Damage>> {
    proptest::collection::vec(arb_damage(), 1..5)
}

fn damage(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        let len = bytes.len();
        match *d {
            Damage::Flip(i, b) if len > 0 => bytes[i % len] ^= b.max(1),
            Damage::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Damage::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Damage::Truncate(i) => bytes.truncate(i % (len + 1)),
            Damage::Duplicate(i, n) if len > 0 => {
                let start = i % len;
                let end = (start + n).min(len);
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
            }
            _ => {}
        }
    }
    bytes
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

// ----- the job manifest ---------------------------------------------------------

fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        "[a-z][a-z0-9-]{0,20}",
        0u32..1_000,
        proptest::collection::btree_map("[a-z][a-z0-9_]{0,15}", "\\PC{0,40}", 0..8),
    )
        .prop_map(|(workflow, page_count, metadata)| Manifest {
            workflow,
            page_count,
            metadata,
        })
}

/// The manifest as a device might write it: fields in any order, spaces.
fn loose_json(manifest: &Manifest, order: u8, spaced: bool) -> String {
    let workflow = serde_json::to_string(&manifest.workflow).expect("a string");
    let metadata = serde_json::to_string(&manifest.metadata).expect("a map");
    let mut fields = [
        format!("\"workflow\":{workflow}"),
        format!("\"page_count\":{}", manifest.page_count),
        format!("\"metadata\":{metadata}"),
    ];
    fields.rotate_left(usize::from(order % 3));
    let sep = if spaced { ",\n  " } else { "," };
    format!("{{{}}}", fields.join(sep))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn manifest_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(m) = Manifest::parse(&bytes) {
            let _ = m.check(500);
            let _ = m.canonical();
        }
    }

    #[test]
    fn manifests_round_trip_through_their_canonical_form(
        manifest in arb_manifest(), order in any::<u8>(), spaced in any::<bool>(),
    ) {
        let parsed = Manifest::parse(loose_json(&manifest, order, spaced).as_bytes())
            .expect("a well-formed manifest parses");
        prop_assert_eq!(&parsed, &manifest);
        let canonical = parsed.canonical();
        let again = Manifest::parse(canonical.as_bytes()).expect("the canonical form parses");
        prop_assert_eq!(again.canonical(), canonical);
        prop_assert_eq!(again.check(500).is_ok(), manifest.check(500).is_ok());
    }

    #[test]
    fn damaged_manifests_are_a_manifest_or_an_error(
        manifest in arb_manifest(), damages in arb_damages(),
    ) {
        let bytes = damage(loose_json(&manifest, 0, false).into_bytes(), &damages);
        if let Ok(m) = Manifest::parse(&bytes) {
            let _ = m.check(500);
            let again = Manifest::parse(m.canonical().as_bytes()).expect("the canonical form parses");
            prop_assert_eq!(again, m);
        }
    }
}

// ----- the PROXY protocol header ------------------------------------------------

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// A header as HAProxy writes it, in version 1 (text) or 2 (binary, with
/// optional TLVs after the addresses).
fn proxy_header(version: u8, source: SocketAddr, dest: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    if version == 1 {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            dest.ip(),
            source.port(),
            dest.port()
        )
        .into_bytes();
    }
    let mut body = Vec::new();
    let family = match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x21
        }
        _ => unreachable!("both addresses are of one family"),
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&dest.port().to_be_bytes());
    body.extend_from_slice(tlvs);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn arb_addresses() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| (
                SocketAddr::new(IpAddr::from(s), sp),
                SocketAddr::new(IpAddr::from(d), dp)
            )),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| (
                SocketAddr::new(IpAddr::from(s), sp),
                SocketAddr::new(IpAddr::from(d), dp)
            )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn proxy_headers_round_trip(
        version in 1u8..=2,
        (source, dest) in arb_addresses(),
        tlvs in proptest::collection::vec(any::<u8>(), 0..64),
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = proxy_header(version, source, dest, &tlvs);
        let mut bytes = header.clone();
        bytes.extend_from_slice(&rest);
        prop_assert_eq!(
            proxy_protocol::parse(&bytes),
            Ok(Some(ProxyHeader { len: header.len(), source: Some(source) }))
        );
        // Every strict prefix asks for more bytes.
        for cut in 0..header.len() {
            prop_assert_eq!(proxy_protocol::parse(&header[..cut]), Ok(None));
        }
    }

    #[test]
    fn damaged_proxy_headers_are_a_header_or_an_error(
        version in 1u8..=2,
        (source, dest) in arb_addresses(),
        damages in arb_damages(),
    ) {
        let bytes = damage(proxy_header(version, source, dest, &[]), &damages);
        if let Ok(Some(h)) = proxy_protocol::parse(&bytes) {
            prop_assert!(h.len > 0 && h.len <= bytes.len());
            prop_assert_eq!(proxy_protocol::parse(&bytes[..h.len]), Ok(Some(h)));
        }
    }
}

// ----- the configuration file ---------------------------------------------------

/// The configuration files the product ships and documents.
static EXAMPLE_CONFIGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let docs = include_str!("../../docs/configuration.md");
    let mut files = vec![settings::EMBEDDED_DEFAULTS.to_owned()];
    files.extend(
        docs.split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .map(str::to_owned),
    );
    files.push(files[1..].concat());
    files
});

/// A change to a configuration file, by lines or by bytes.
#[derive(Debug, Clone)]
enum ConfigEdit {
    DropLine(usize),
    DuplicateLine(usize),
    /// Replaces the value after `=` on a line.
    Value(usize, String),
    Bytes(Vec<Damage>),
}

fn arb_config_edit() -> impl Strategy<Value = ConfigEdit> {
    let value = prop_oneof![
        Just("\"\"".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"0.0.0.0:99999\"".to_owned()),
        Just("\"[::1]:0\"".to_owned()),
        Just("\"1ZiB\"".to_owned()),
        Just("\"Mars/Olympus\"".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("\"../../etc\"".to_owned()),
        "\"\\PC{0,12}\"",
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")),
    ];
    prop_oneof![
        any::<usize>().prop_map(ConfigEdit::DropLine),
        any::<usize>().prop_map(ConfigEdit::DuplicateLine),
        (any::<usize>(), value).prop_map(|(i, v)| ConfigEdit::Value(i, v)),
        arb_damages().prop_map(ConfigEdit::Bytes),
    ]
}

fn edit_config(text: &str, edits: &[ConfigEdit]) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut bytes = None;
    for edit in edits {
        let len = lines.len().max(1);
        match edit {
            ConfigEdit::DropLine(i) if !lines.is_empty() => {
                lines.remove(i % len);
            }
            ConfigEdit::DuplicateLine(i) if !lines.is_empty() => {
                let line = lines[i % len].clone();
                lines.insert(i % len, line);
            }
            ConfigEdit::Value(i, v) if !lines.is_empty() => {
                let line = &mut lines[i % len];
                if let Some(eq) = line.find('=') {
                    line.replace_range(eq + 1.., &format!(" {v}"));
                }
            }
            ConfigEdit::Bytes(damages) => bytes = Some(damages.clone()),
            _ => {}
        }
    }
    let text = lines.join("\n").into_bytes();
    match bytes {
        Some(damages) => damage(text, &damages),
        None => text,
    }
}

/// Loads `bytes` as the configuration file, for no instance and for the
/// first instance it names; never panics.
fn load_config(dir: &tempfile::TempDir, bytes: &[u8]) {
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, bytes).expect("writing the file");
    let env = Env::none();
    let _ = settings::load(Source::File(&path), None, &env);
    if let Some(name) = settings::instance_names(Source::File(&path))
        .ok()
        .and_then(|names| names.into_iter().next())
    {
        let _ = settings::load(Source::File(&path), Some(&name), &env);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn damaged_configuration_files_are_settings_or_an_error(
        which in any::<usize>(),
        edits in proptest::collection::vec(arb_config_edit(), 1..5),
    ) {
        let dir = tempfile::tempdir().expect("a directory");
        let text = &EXAMPLE_CONFIGS[which % EXAMPLE_CONFIGS.len()];
        load_config(&dir, &edit_config(text, &edits));
    }

    #[test]
    fn arbitrary_configuration_text_is_settings_or_an_error(
        text in "(\\[[a-z.]{1,20}\\]\n|[a-z_]{1,12} = (\"\\PC{0,10}\"|[0-9]{1,20}|true|\\[\\])\n){0,12}",
    ) {
        let dir = tempfile::tempdir().expect("a directory");
        load_config(&dir, text.as_bytes());
    }
}

// ----- the pair link's frames ---------------------------------------------------

fn arb_server() -> impl Strategy<Value = ServerId> {
    any::<u128>().prop_map(ServerId::from_u128)
}

fn arb_epoch() -> impl Strategy<Value = Epoch> {
    (any::<u64>(), arb_server()).prop_map(|(n, s)| Epoch::new(n, s))
}

fn arb_stamp() -> impl Strategy<Value = ConfigStamp> {
    (any::<u64>(), arb_epoch()).prop_map(|(version, epoch)| ConfigStamp { version, epoch })
}

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..8_000_000_000).prop_map(|s| DateTime::from_timestamp(s, 0).expect("in range"))
}

fn arb_uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn arb_message() -> impl Strategy<Value = Message> {
    let role = prop_oneof![
        Just(pair_core::Role::Inactive),
        Just(pair_core::Role::Secondary),
        arb_epoch().prop_map(|term| pair_core::Role::Primary { term }),
        (arb_epoch(), arb_epoch()).prop_map(|(term, by)| pair_core::Role::Fenced { term, by }),
    ];
    let body = prop_oneof![
        ("\\PC{0,16}", any::<u32>(), arb_stamp(), any::<u64>()).prop_map(
            |(instance, software_major, config, takeovers_seen)| MessageBody::Hello(Hello {
                instance,
                software_major,
                config,
                takeovers_seen,
            })
        ),
        arb_stamp().prop_map(|config| MessageBody::Heartbeat {
            config,
            lease: Default::default(),
        }),
        Just(MessageBody::Closing),
        (
            arb_stamp(),
            arb_stamp(),
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(
                |(stamp, prev, payload)| MessageBody::ConfigChange(ConfigChange {
                    stamp,
                    prev,
                    payload,
                })
            ),
        arb_stamp().prop_map(|stamp| MessageBody::ConfigAck { stamp }),
        arb_stamp().prop_map(|have| MessageBody::SnapshotRequest { have }),
        (arb_stamp(), proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(stamp, payload)| MessageBody::ConfigSnapshot { stamp, payload }),
    ];
    (arb_server(), arb_epoch(), role, body).prop_map(|(from, epoch, role, body)| Message {
        from,
        epoch,
        role,
        body,
    })
}

fn arb_offer() -> impl Strategy<Value = JobOffer> {
    (
        (
            arb_uuid(),
            arb_uuid(),
            "\\PC{0,12}",
            "[a-z-]{1,12}",
            "\\PC{0,40}",
        ),
        (
            any::<u64>(),
            any::<u64>(),
            arb_time(),
            arb_server(),
            any::<u64>(),
            any::<bool>(),
        ),
        proptest::collection::vec(
            (1u32..100, "[0-9]{4}\\.(png|tif|jpg|pdf)", any::<u64>()),
            0..4,
        ),
    )
        .prop_map(
            |(
                (id, device_id, user, workflow, manifest),
                (bytes, epoch, at, acceptor, seq, started),
                pages,
            )| JobOffer {
                id,
                device_id,
                user,
                workflow,
                manifest,
                manifest_sha256: "0".repeat(64),
                bytes,
                accepted_by: "gw-a".into(),
                accepted_role: "primary".into(),
                accepted_epoch: epoch,
                client_addr: Some("192.0.2.7:40000".into()),
                received_at: at,
                acceptor,
                seq,
                started,
                done: started && seq % 2 == 0,
                pages: pages
                    .into_iter()
                    .map(|(seq, file_name, bytes)| OfferedPage {
                        seq,
                        file_name,
                        format: "png".into(),
                        bytes,
                        sha256: "f".repeat(64),
                    })
                    .collect(),
            },
        )
}

fn arb_wire() -> impl Strategy<Value = Wire> {
    prop_oneof![
        arb_message().prop_map(Wire::Protocol),
        any::<u64>().prop_map(|sent_ms| Wire::ClockProbe { sent_ms }),
        (
            any::<u64>(),
            any::<u64>(),
            "\\PC{0,12}",
            proptest::option::of("[A-Za-z/_]{1,20}")
        )
            .prop_map(|(sent_ms, wall_ms, instance, time_zone)| Wire::ClockReply {
                sent_ms,
                wall_ms,
                instance,
                time_zone,
            }),
        arb_offer().prop_map(|offer| Wire::JobOffer(Box::new(offer))),
        (arb_uuid(), any::<u32>(), "[A-Za-z0-9+/]{0,40}")
            .prop_map(|(job, page, data)| Wire::JobChunk { job, page, data }),
        arb_uuid().prop_map(|job| Wire::JobEnd { job }),
        (arb_uuid(), any::<u64>()).prop_map(|(job, seq)| Wire::JobStored { job, seq }),
        (arb_uuid(), "\\PC{0,20}", any::<bool>()).prop_map(|(job, reason, disk_full)| {
            Wire::JobRefused {
                job,
                reason,
                disk_full,
            }
        }),
        (arb_uuid(), any::<u64>()).prop_map(|(job, rev)| Wire::JobNewsStored { job, rev }),
        (
            any::<u64>(),
            proptest::collection::vec((arb_uuid(), any::<u64>(), any::<u32>()), 0..3)
        )
            .prop_map(|(count, jobs)| Wire::TakenOver {
                count,
                jobs: jobs
                    .into_iter()
                    .map(|(job, owner_term, from_step)| TakenJob {
                        job,
                        owner_term,
                        from_step,
                    })
                    .collect(),
            }),
        proptest::collection::vec(
            (
                "[a-zA-Z0-9._-]{1,30}",
                any::<i64>(),
                proptest::option::of(any::<u64>())
            ),
            0..3
        )
        .prop_map(|ended| Wire::SessionsEnded(
            ended
                .into_iter()
                .map(|(session, expires_at, jobs_scanned)| EndedSession {
                    session,
                    expires_at,
                    jobs_scanned,
                })
                .collect()
        )),
        (arb_uuid(), proptest::option::of(arb_server()))
            .prop_map(|(job, keeper)| Wire::JobDuplicate { job, keeper }),
        (
            arb_uuid(),
            "[a-z+]{0,12}",
            proptest::option::of(any::<u32>()),
            "[A-Za-z0-9+/]{0,40}"
        )
            .prop_map(|(id, languages, dpi, image)| Wire::OcrRequest {
                id,
                languages,
                dpi,
                image,
            }),
        (arb_uuid(), "\\PC{0,20}", any::<bool>()).prop_map(|(id, why, permanent)| {
            Wire::OcrAnswer {
                id,
                answer: PageAnswer::Failed { why, permanent },
            }
        }),
        (arb_uuid(), "[A-Za-z0-9+/]{0,20}", "\\PC{0,20}").prop_map(|(id, pdf, text)| {
            Wire::OcrAnswer {
                id,
                answer: PageAnswer::Done { pdf, text },
            }
        }),
        arb_uuid().prop_map(|job| Wire::JobQuery { job }),
        arb_uuid().prop_map(|job| Wire::JobKnown { job, known: None }),
    ]
}

fn json_of(frame: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&frame[4..]).expect("an encoded frame is JSON")
}

/// Reads every frame of `stream` as `T` until the end or the first error,
/// as the connection's reader does.
async fn read_all<T: serde::de::DeserializeOwned>(mut stream: &[u8]) -> Vec<T> {
    let mut out = Vec::new();
    while let Ok(Some(value)) = frame::read::<_, T>(&mut stream).await {
        out.push(value);
    }
    out
}

static FRAME_RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(runtime);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn wire_frames_round_trip(wires in proptest::collection::vec(arb_wire(), 1..4)) {
        let stream: Vec<u8> = wires.iter().flat_map(frame::encode).collect();
        let read: Vec<Wire> = FRAME_RUNTIME.block_on(read_all(&stream));
        prop_assert_eq!(read.len(), wires.len());
        for (sent, got) in wires.iter().zip(&read) {
            prop_assert_eq!(json_of(&frame::encode(got)), json_of(&frame::encode(sent)));
        }
    }

    #[test]
    fn damaged_frame_streams_are_frames_or_an_error(
        wires in proptest::collection::vec(arb_wire(), 1..4),
        damages in arb_damages(),
    ) {
        let stream: Vec<u8> = wires.iter().flat_map(frame::encode).collect();
        let stream = damage(stream, &damages);
        let read: Vec<Wire> = FRAME_RUNTIME.block_on(read_all(&stream));
        for wire in read {
            let encoded = frame::encode(&wire);
            let again: Vec<Wire> = FRAME_RUNTIME.block_on(read_all(&encoded));
            prop_assert_eq!(again.len(), 1);
        }
    }

    #[test]
    fn arbitrary_bytes_on_the_pair_link_are_frames_or_an_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        body in "\\PC{0,64}",
    ) {
        let _: Vec<Wire> = FRAME_RUNTIME.block_on(read_all(&bytes));
        // A well-framed body that is not a message.
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(body.as_bytes());
        let _: Vec<Wire> = FRAME_RUNTIME.block_on(read_all(&framed));
        let _: Vec<JoinRequest> = FRAME_RUNTIME.block_on(read_all(&framed));
        let _: Vec<JoinAnswer> = FRAME_RUNTIME.block_on(read_all(&framed));
    }

    #[test]
    fn pairing_handshake_frames_round_trip(
        proof in "[0-9a-f]{64}", server in arb_server(), instance in "\\PC{0,16}", refused in any::<bool>(),
        damages in arb_damages(),
    ) {
        let request = frame::encode(&JoinRequest { proof, server, instance: instance.clone() });
        let read: Vec<JoinRequest> = FRAME_RUNTIME.block_on(read_all(&request));
        prop_assert_eq!(read.len(), 1);
        prop_assert_eq!(json_of(&frame::encode(&read[0])), json_of(&request));
        let answer = if refused {
            JoinAnswer::Refused { reason: instance }
        } else {
            JoinAnswer::Accepted { server, instance }
        };
        let answer = frame::encode(&answer);
        let read: Vec<JoinAnswer> = FRAME_RUNTIME.block_on(read_all(&answer));
        prop_assert_eq!(read.len(), 1);
        prop_assert_eq!(json_of(&frame::encode(&read[0])), json_of(&answer));
        let _: Vec<JoinRequest> = FRAME_RUNTIME.block_on(read_all(&damage(request, &damages)));
        let _: Vec<JoinAnswer> = FRAME_RUNTIME.block_on(read_all(&damage(answer, &damages)));
    }
}

// ----- the pairing code ---------------------------------------------------------

fn arb_code() -> impl Strategy<Value = PairingCode> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 16]>(),
        -8_000_000_000i64..8_000_000_000,
    )
        .prop_map(|(primary_fingerprint, secret, expiry)| PairingCode {
            primary_fingerprint,
            secret,
            expires_at: DateTime::from_timestamp(expiry, 0).expect("in range"),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pairing_codes_round_trip(code in arb_code(), upper in any::<bool>()) {
        let text = code.text();
        prop_assert_eq!(PairingCode::parse(&text), Ok(code.clone()));
        // Copied with surrounding blanks, or with hex digits in upper case.
        let typed = if upper { text.replace("sgp1.", "").to_uppercase() } else { text.clone() };
        let typed = if upper { format!("sgp1.{typed}") } else { format!("  {typed}\n") };
        prop_assert_eq!(PairingCode::parse(&typed), Ok(code));
    }

    #[test]
    fn damaged_pairing_codes_are_a_code_or_an_error(code in arb_code(), damages in arb_damages()) {
        let bytes = damage(code.text().into_bytes(), &damages);
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(read) = PairingCode::parse(text)
        {
            prop_assert_eq!(PairingCode::parse(&read.text()), Ok(read));
        }
    }

    #[test]
    fn arbitrary_text_is_a_pairing_code_or_an_error(text in "\\PC{0,120}", dotted in "sgp1(\\.[0-9a-fA-F-]{0,70}){0,5}") {
        let _ = PairingCode::parse(&text);
        let _ = PairingCode::parse(&dotted);
    }
}

// ----- the upload stream of the intake ------------------------------------------

const BOUNDARY: &str = "xBOUNDARYx";

/// A licensed primary with one approved device and one open session, its
/// store and spool in a temporary directory; requests go straight into the
/// router.
struct Site {
    runtime: tokio::runtime::Runtime,
    core: Arc<Core>,
    token: String,
    session: String,
    _dir: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        let dir = tempfile::tempdir().expect("a directory");
        let hash = PasswordHash::create("pw", MIN_ITERATIONS).to_text();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[defaults]
listen = "127.0.0.1:0"
data_dir = "{}/{{instance}}"

[limits]
max_pages = 8
max_page_bytes = "64KiB"
max_job_bytes = "256KiB"

[users.ann]
password_hash = "{hash}"

[workflows.scan-to-folder]
steps = [{{ plugin = "assemble" }}, {{ plugin = "folder", root = "{{data_dir}}/delivered" }}]
"#,
                dir.path().display()
            ),
        )
        .expect("writing the configuration");
        let settings = settings::load(Source::File(&file), Some("gw-p"), &Env::none())
            .expect("the configuration is valid");
        let runtime = runtime();
        let (vendor, _) = VendorKeyPair::generate().expect("a vendor key");
        let core = Core::for_tests(settings, TrustedKeys::builtin().with(vendor.public_key()));
        let key = vendor
            .issue(&KeySpec {
                role: Role::Primary,
                serial: 7,
                seats: 5,
                expires: None,
            })
            .expect("a key");
        let (token, session) = runtime.block_on(async {
            core.data.start().await.expect("the data service starts");
            core.load_generation(core.data.state().generation)
                .await
                .expect("the configuration loads");
            core.activate_license(key).await.expect("the key activates");
            let role = core.role.snapshot();
            let instance = core.name().to_owned();
            let token = core
                .data
                .run(move |s| {
                    Ok(ops::add_device(s, &role, &instance, "mfd-props", None)
                        .expect("the primary adds devices")
                        .token)
                })
                .await
                .expect("the device is stored");
            let (status, body) = call(
                &core,
                Request::post("/api/v1/sessions")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(r#"{"user":"ann","password":"pw"}"#))
                    .expect("a request"),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            (
                token,
                body["session"].as_str().expect("a session").to_owned(),
            )
        });
        Site {
            runtime,
            core,
            token,
            session,
            _dir: dir,
        }
    }

    fn upload(&self, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
        let request = Request::put(format!("/api/v1/jobs/{}", Uuid::new_v4()))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header("x-scan-session", &self.session)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(body))
            .expect("a request");
        self.runtime.block_on(call(&self.core, request))
    }
}

async fn call(core: &Arc<Core>, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = gateway::web::app(core.clone())
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body)
}

/// The first bytes of each page format the intake recognises.
const MAGICS: [&[u8]; 4] = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"II*\x00",
    b"%PDF-1.",
];

#[derive(Debug, Clone)]
struct Part {
    name: String,
    content: Vec<u8>,
}

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n",
                part.name
            )
            .as_bytes(),
        );
        body.extend_from_slice(&part.content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A valid upload: the manifest, then `pages` page parts of known formats.
fn arb_upload() -> impl Strategy<Value = (u32, Vec<Part>)> {
    proptest::collection::vec(
        (
            0..MAGICS.len(),
            proptest::collection::vec(any::<u8>(), 0..200),
        ),
        1..4,
    )
    .prop_map(|pages| {
        let manifest = serde_json::json!({"workflow": "scan-to-folder", "page_count": pages.len()});
        let mut parts = vec![Part {
            name: "manifest".into(),
            content: manifest.to_string().into_bytes(),
        }];
        for (format, mut tail) in pages {
            // Not a boundary by accident.
            tail.retain(|&b| b != b'-');
            let mut content = MAGICS[format].to_vec();
            content.append(&mut tail);
            parts.push(Part {
                name: "page".into(),
                content,
            });
        }
        (parts.len() as u32 - 1, parts)
    })
}

/// A change to a valid upload's structure.
#[derive(Debug, Clone)]
enum PartEdit {
    Swap(usize, usize),
    Drop(usize),
    Repeat(usize),
    Rename(usize, String),
    Empty(usize),
}

fn arb_part_edit() -> impl Strategy<Value = PartEdit> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| PartEdit::Swap(a, b)),
        any::<usize>().prop_map(PartEdit::Drop),
        any::<usize>().prop_map(PartEdit::Repeat),
        (any::<usize>(), "(manifest|page|pages|Manifest|[a-z]{0,8})")
            .prop_map(|(i, n)| PartEdit::Rename(i, n)),
        any::<usize>().prop_map(PartEdit::Empty),
    ]
}

fn edit_parts(mut parts: Vec<Part>, edits: &[PartEdit]) -> Vec<Part> {
    for edit in edits {
        let len = parts.len();
        if len == 0 {
            break;
        }
        match edit {
            PartEdit::Swap(a, b) => parts.swap(a % len, b % len),
            PartEdit::Drop(i) => {
                parts.remove(i % len);
            }
            PartEdit::Repeat(i) => {
                let part = parts[i % len].clone();
                parts.insert(i % len, part);
            }
            PartEdit::Rename(i, name) => parts[i % len].name = name.clone(),
            PartEdit::Empty(i) => parts[i % len].content.clear(),
        }
    }
    parts
}

/// A refusal is a 4xx with the API's error body; nothing is a 5xx.
fn check_answer(status: StatusCode, body: &serde_json::Value) -> Result<(), TestCaseError> {
    prop_assert!(
        status == StatusCode::CREATED || status.is_client_error(),
        "an upload was answered {status}: {body}"
    );
    if status.is_client_error() {
        prop_assert!(body["error"]["code"].is_string(), "{status} {body}");
    }
    Ok(())
}

static INTAKE: LazyLock<Site> = LazyLock::new(Site::start);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn uploads_are_accepted_or_refused_with_a_reason(
        (pages, parts) in arb_upload(),
        edits in proptest::collection::vec(arb_part_edit(), 0..3),
        damages in proptest::collection::vec(arb_damage(), 0..3),
    ) {
        let valid = edits.is_empty() && damages.is_empty();
        let body = damage(multipart(&edit_parts(parts, &edits)), &damages);
        let (status, answer) = INTAKE.upload(body);
        check_answer(status, &answer)?;
        if valid {
            prop_assert_eq!(status, StatusCode::CREATED, "{}", answer);
            prop_assert_eq!(answer["pages"].as_u64(), Some(u64::from(pages)));
        }
    }

    #[test]
    fn arbitrary_upload_bodies_are_refused_with_a_reason(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        manifest in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let (status, answer) = INTAKE.upload(bytes);
        check_answer(status, &answer)?;
        let body = multipart(&[Part { name: "manifest".into(), content: manifest }]);
        let (status, answer) = INTAKE.upload(body);
        check_answer(status, &answer)?;
        prop_assert!(status.is_client_error(), "a job without pages was answered {}", status);
    }
}

// ----- uploaded page files ------------------------------------------------------

/// A JPEG and a two-page PDF as scanners and `pdftoppm` write them.
const JPEG_PAGE: &[u8] = include_bytes!("fixtures/page.jpg");
const PDF_PAGES: &[u8] = include_bytes!("fixtures/two_pages.pdf");

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An 8-bit grey PNG, its pixels in stored (uncompressed) deflate blocks.
fn grey_png(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    for row in pixels.chunks(width as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        out.extend_from_slice(&typed);
        out.extend_from_slice(&crc32(&typed).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A little-endian baseline TIFF of uncompressed 8-bit grey pages, each
/// `width` x `height`, at `dpi`.
fn grey_tiff(width: u16, height: u16, dpi: u32, pages: &[Vec<u8>]) -> Vec<u8> {
    const ENTRIES: usize = 10;
    let ifd_len = 2 + ENTRIES * 12 + 4;
    let mut out = b"II*\x00".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    let resolution_at = 8 + pages.len() * ifd_len;
    let mut data_at = resolution_at + 8;
    for (i, pixels) in pages.iter().enumerate() {
        let next = if i + 1 == pages.len() {
            0
        } else {
            8 + (i + 1) * ifd_len
        };
        out.extend_from_slice(&(ENTRIES as u16).to_le_bytes());
        let short = |v: u16| u32::from(v);
        let entries: [(u16, u16, u32); ENTRIES] = [
            (256, 3, short(width)),
            (257, 3, short(height)),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, data_at as u32),
            (277, 3, 1),
            (278, 3, short(height)),
            (279, 4, pixels.len() as u32),
            (282, 5, resolution_at as u32),
        ];
        for (tag, kind, value) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(next as u32).to_le_bytes());
        data_at += pixels.len();
    }
    out.extend_from_slice(&dpi.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for pixels in pages {
        out.extend_from_slice(pixels);
    }
    out
}

/// One page as read: the size its header announces, and the size of its
/// pixels when they decoded.
type PageRead = (u32, u32, Option<(u32, u32)>);

/// What the pipeline reads of a page file: its pages, and each raster
/// page's size and pixels (under a limit). Never panics.
fn read_page_file(dir: &tempfile::TempDir, bytes: &[u8]) -> Option<Vec<PageRead>> {
    let format = plugins::PageFormat::sniff(bytes)?;
    let path = dir.path().join("page");
    std::fs::write(&path, bytes).expect("writing the file");
    let pages = plugins::page::enumerate_pages(&[plugins::PageFile { path, format }]).ok()?;
    assert!(!pages.is_empty(), "a file with no pages was not refused");
    let mut out = Vec::new();
    for page in pages.iter().take(8) {
        if format == plugins::PageFormat::Pdf {
            continue;
        }
        let Ok(info) = plugins::page::raster_info(page) else {
            continue;
        };
        let decoded = plugins::page::decode_raster(page, 1 << 20)
            .ok()
            .map(|d| (d.image.width(), d.image.height()));
        out.push((info.width, info.height, decoded));
    }
    Some(out)
}

fn arb_grey(max: u16) -> impl Strategy<Value = (u16, u16, Vec<u8>)> {
    (1..=max, 1..=max).prop_flat_map(|(w, h)| {
        proptest::collection::vec(any::<u8>(), usize::from(w) * usize::from(h))
            .prop_map(move |pixels| (w, h, pixels))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn page_files_decode_to_their_size(
        (w, h, pixels) in arb_grey(40), pages in 1usize..4, dpi in 1u32..5_000,
    ) {
        let dir = tempfile::tempdir().expect("a directory");
        let png = grey_png(u32::from(w), u32::from(h), &pixels);
        let read = read_page_file(&dir, &png).expect("a PNG page reads");
        prop_assert_eq!(read, vec![(u32::from(w), u32::from(h), Some((u32::from(w), u32::from(h))))]);
        let tiff = grey_tiff(w, h, dpi, &vec![pixels; pages]);
        let read = read_page_file(&dir, &tiff).expect("a TIFF reads");
        let page = (u32::from(w), u32::from(h), Some((u32::from(w), u32::from(h))));
        prop_assert_eq!(read, vec![page; pages]);
    }

    #[test]
    fn damaged_page_files_are_pages_or_an_error(
        (w, h, pixels) in arb_grey(16), which in 0u8..4, damages in arb_damages(),
    ) {
        let dir = tempfile::tempdir().expect("a directory");
        let valid = match which {
            0 => grey_png(u32::from(w), u32::from(h), &pixels),
            1 => grey_tiff(w, h, 300, &[pixels.clone(), pixels]),
            2 => JPEG_PAGE.to_vec(),
            _ => PDF_PAGES.to_vec(),
        };
        let _ = read_page_file(&dir, &damage(valid, &damages));
    }
}

#[test]
fn the_page_fixtures_read() {
    let dir = tempfile::tempdir().expect("a directory");
    let jpeg = read_page_file(&dir, JPEG_PAGE).expect("the JPEG reads");
    assert!(matches!(jpeg[..], [(w, h, Some((dw, dh)))] if w == dw && h == dh && w > 0));
    let path = dir.path().join("pages.pdf");
    std::fs::write(&path, PDF_PAGES).expect("writing the file");
    assert_eq!(
        plugins::page::pdf_page_sizes(&path).expect("the PDF reads"),
        vec![(595.0, 842.0), (612.0, 792.0)]
    );
}
