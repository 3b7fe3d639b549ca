//! Fuzz target: the job manifest, the JSON first part of every upload
//! (`Manifest::parse`, then `check`). A manifest that parses must keep its
//! meaning through its canonical form, whose hash tells a resubmission from
//! another job.

#![no_main]

use gateway::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    let checked = manifest.check(200).is_ok();
    let canonical = manifest.canonical();
    let again = Manifest::parse(canonical.as_bytes()).expect("the canonical form parses");
    assert_eq!(again, manifest);
    assert_eq!(again.canonical(), canonical);
    assert_eq!(again.check(200).is_ok(), checked);
});
