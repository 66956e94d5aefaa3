//! Device API bodies as the server reads them (bounded, depth-checked, fixed schema), then
//! validated; the report-batch message a device signs; what a replica and its upstream send
//! each other (`/replica/v1/`); and an export bundle's `bundle.json` as a mirror reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_proto::api::{BundleManifest, parse_body_limited};
use ringfence_proto::device::{
    CheckinRequest, DeviceAnswers, DeviceQuestion, EnrollRequest, ForwardedAck, ForwardedReports, MAX_DEVICE_BODY,
    MAX_REPLICA_BODY, ReportBatch, SessionRequest, parse_report_batch_message,
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
    if let Ok(forwarded) = parse_body_limited::<ForwardedReports>(data, MAX_REPLICA_BODY) {
        let _ = forwarded.validate();
    }
    if let Ok(question) = parse_body_limited::<DeviceQuestion>(data, MAX_REPLICA_BODY) {
        let _ = question.validate();
    }
    let _ = parse_body_limited::<DeviceAnswers>(data, MAX_REPLICA_BODY);
    let _ = parse_body_limited::<ForwardedAck>(data, MAX_REPLICA_BODY);
    let _ = parse_body_limited::<BundleManifest>(data, 64 * 1024);
});
