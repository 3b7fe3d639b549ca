//! Fuzz target: the configuration file (TOML, then validation into typed
//! settings, `settings::load`). The text is written to a file on tmpfs and
//! loaded the way `gateway --config FILE` loads it, for the first instance
//! it names or with no instance given; every input gives settings or a
//! `SettingsError`, never a panic.

#![no_main]

use std::io::Write;
use std::sync::{LazyLock, Mutex};

use gateway::settings::{self, Env, Source};
use libfuzzer_sys::fuzz_target;

static FILE: LazyLock<Mutex<tempfile::NamedTempFile>> = LazyLock::new(|| {
    let file = tempfile::Builder::new()
        .prefix("scangw-fuzz-settings-")
        .suffix(".toml")
        .tempfile_in("/dev/shm")
        .or_else(|_| tempfile::NamedTempFile::new())
        .expect("a temporary file");
    Mutex::new(file)
});

fuzz_target!(|data: &[u8]| {
    let file = FILE.lock().expect("one execution at a time");
    {
        let mut f = file.as_file();
        f.set_len(0).expect("truncating the file");
        std::io::Seek::rewind(&mut f).expect("rewinding the file");
        f.write_all(data).expect("writing the file");
    }
    let path = file.path();
    let env = Env::none();
    let first = settings::instance_names(Source::File(path))
        .ok()
        .and_then(|names| names.into_iter().next());
    let _ = settings::load(Source::File(path), None, &env);
    if let Some(name) = first {
        let _ = settings::load(Source::File(path), Some(&name), &env);
    }
});
