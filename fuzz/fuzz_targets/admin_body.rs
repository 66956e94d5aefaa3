//! Admin API request bodies, through the same parser the server uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_proto::api::{ApprovalRequest, SignatureUpload, TokenRequest, UpdateManifest, parse_body};

fuzz_target!(|data: &[u8]| {
    let _ = parse_body::<UpdateManifest>(data);
    let _ = parse_body::<ApprovalRequest>(data);
    let _ = parse_body::<SignatureUpload>(data);
    let _ = parse_body::<TokenRequest>(data);
});
