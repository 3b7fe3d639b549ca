//! The data directory is private to the service user: a local user of the
//! same machine can read none of the store, the spool, the logs or the
//! delivered documents. The test makes a real unprivileged user for that
//! (so it runs as root, as the README's test command does) and removes it
//! again; it fails, never skips, when it cannot.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::http::{Device, png};
use e2e::support::LocalUser;
use e2e::support::files_under;
use e2e::{Site, eventually};
use uuid::Uuid;

/// Whether `user` can run `program path`.
fn can(user: &LocalUser, program: &str, path: &Path) -> bool {
    user.command(program)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("this test needs `runuser` (util-linux): {e}"))
        .status
        .success()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every directory under `root`, `root` included.
fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Checks every file and directory under `root`: no access for group or
/// others by mode, and none in fact for `user`.
fn assert_private(root: &Path, user: &LocalUser, what: &str) -> usize {
    let mut checked = 0;
    for dir in dirs_under(root) {
        assert_eq!(
            mode(&dir) & 0o077,
            0,
            "{what}: directory {} is {:04o}",
            dir.display(),
            mode(&dir)
        );
        assert!(
            !can(user, "ls", &dir),
            "{what}: {} can list {}",
            user.name,
            dir.display()
        );
        checked += 1;
    }
    for file in files_under(root) {
        assert_eq!(
            mode(&file) & 0o077,
            0,
            "{what}: file {} is {:04o}",
            file.display(),
            mode(&file)
        );
        assert!(
            !can(user, "cat", &file),
            "{what}: {} can read {}",
            user.name,
            file.display()
        );
        checked += 1;
    }
    checked
}

// Regression: the store (with the session signing key and the license),
// spooled pages and delivered documents were 0644 in 0755 directories.
#[test]
fn an_unprivileged_local_user_can_read_nothing_of_the_data_directory() {
    let user = LocalUser::create("probe");
    let site = Site::new(&["gw-a"], "");
    // The site's temporary directory is private by itself: open it, so that
    // only the gateway's own modes stand between the user and its files.
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    site.activate("gw-a", "03", 1, 2);
    let token = site.add_device("gw-a", "mfd-1");
    let gw = site.start("gw-a");
    let data_dir = site.data_dir("gw-a");
    assert!(
        can(&user, "ls", site.dir.path()),
        "the probe user must reach the data directory's parent for the test to mean anything"
    );

    // A job held in the spool: pipeline paused.
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let ack = dev.submit(&session, job, "scan-to-folder", &[png(50_000, 1)]);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    let spooled = data_dir.join(format!("gw-a-spool/jobs/{job}"));
    assert!(spooled.is_dir(), "the job waits in the spool");
    assert_eq!(files_under(&spooled).len(), 1, "the page is spooled");
    assert_private(&data_dir, &user, "with a job in the spool");

    // The job delivered into the instance's folder.
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    dev.wait_for_state(job, "done", Duration::from_secs(60));
    let delivered = eventually(Duration::from_secs(10), || {
        files_under(&data_dir.join("delivered"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "pdf"))
    })
    .expect("the document was delivered");
    for must_exist in [
        data_dir.join("gw-a.sqlite"),
        data_dir.join("logs/gw-a.log"),
        delivered.clone(),
    ] {
        assert!(must_exist.exists(), "{} exists", must_exist.display());
    }
    let checked = assert_private(&data_dir, &user, "after delivery");
    assert!(checked >= 10, "only {checked} entries checked");
}
