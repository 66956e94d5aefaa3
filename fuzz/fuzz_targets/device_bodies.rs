//! Device API bodies as the server reads them (bounded, depth-checked, fixed schema), then
//! validated; and the report-batch message a device signs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_proto::api::parse_body_limited;
use ringfence_proto::device::{
    CheckinRequest, EnrollRequest, MAX_DEVICE_BODY, ReportBatch, SessionRequest, parse_report_batch_message,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = parse_body_limited::<ReportBatch>(data, MAX_DEVICE_BODY) {
        let _ = batch.validate();
    }
    if let Ok(checkin) = parse_body_limited::<CheckinRequest>(data, MAX_DEVICE_BODY) {
        let _ = checkin.inventory.validate();
    }
    let _ = parse_body_limited::<EnrollRequest>(data, MAX_DEVICE_BODY);
    let _ = parse_body_limited::<SessionRequest>(data, MAX_DEVICE_BODY);
    let _ = parse_report_batch_message(data);
});
