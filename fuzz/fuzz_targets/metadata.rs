//! Metadata documents as a TUF client or the server receives them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_proto::tuf::{Root, Snapshot, Targets, Timestamp};
use ringfence_trust::Envelope;
use ringfence_trust::client::TrustedSet;

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::<Root>::parse(data, 1 << 20);
    // What parses re-encodes to canonical JSON without failing.
    if let Ok(targets) = Envelope::<Targets>::parse(data, 1 << 20) {
        let _ = ringfence_trust::canonical::to_canonical(&targets.signed);
    }
    let _ = Envelope::<Snapshot>::parse(data, 1 << 20);
    let _ = Envelope::<Timestamp>::parse(data, 1 << 20);
    let _ = TrustedSet::new(data, 1_800_000_000);
});
