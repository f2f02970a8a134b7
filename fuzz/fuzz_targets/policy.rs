//! Arbitrary policy files: parsed into rules or refused with a reason, never a panic; a
//! parsed policy decides a call.
#![no_main]

use jisu::{
    security::authz::{Call, Policy},
    telemetry::metrics::Metrics,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A registry per input: rule names become metric labels, which must not pile up.
    if let Ok(policy) = Policy::parse(text, "fuzz", &Metrics::new()) {
        let scopes = ["users:read".to_owned()];
        let _ = policy.decide(&Call {
            method: "jisucloud.v1.UserService/GetUser",
            caller: "client",
            subject: "USER0001",
            issuer: "jisu",
            audiences: &[],
            scopes: &scopes,
        });
    }
});
