//! Fuzz target: the one-time pairing code an admin types on the secondary
//! (`PairingCode::parse`). A code that reads must read back the same from
//! its printed text.

#![no_main]

use gateway::pair::pairing::PairingCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = PairingCode::parse(text) {
        assert_eq!(PairingCode::parse(&code.text()), Ok(code.clone()));
        let _ = code.proof(&[7; 32]);
    }
});
