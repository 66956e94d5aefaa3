//! The server renews what it signs online before it expires, and warns about offline roles.

use ringfence_proto::api::Health;
use ringfence_store::Store;

use crate::common::Server;

#[test]
fn timestamp_and_snapshot_are_renewed_before_they_expire() {
    // Lifetimes of a few seconds and a job that looks every second.
    let server = Server::start(|c| {
        c.expiry.timestamp_secs = 4;
        c.expiry.snapshot_secs = 6;
        c.expiry.check_interval_secs = 1;
    });
    // The quickstart signed with the default lifetimes; a publish signs with the short ones.
    server.publish_signed("fresh.bin", b"fresh");
    let store = &server.state.repo.store;
    let latest = |role: &str| server.runtime.block_on(store.latest_metadata(role)).unwrap().unwrap();
    let (ts, snap) = (latest("timestamp"), latest("snapshot"));
    // Poll, bounded: renewal is due after half a lifetime.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while latest("snapshot").version == snap.version && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let (ts2, snap2) = (latest("timestamp"), latest("snapshot"));
    assert!(snap2.version > snap.version, "snapshot was not renewed");
    assert!(ts2.version > ts.version);
    assert!(ts2.expires > ts.expires);
    // What the server renewed still verifies as a client would check it.
    server.runtime.block_on(server.state.repo.self_check(ringfence_server::unix_now())).unwrap();
}

#[test]
fn health_warns_well_before_offline_roles_expire() {
    let server = Server::start(|_| {});
    let health: Health =
        serde_json::from_slice(&server.client(None).get("/api/v1/health").unwrap().ok().unwrap()).unwrap();
    assert_eq!(health.status, "ok", "{health:?}");
    assert!(health.roles.iter().any(|r| r.role.as_str() == "root" && r.offline));
    assert!(health.roles.iter().any(|r| r.role.as_str() == "approvals.pilot" && !r.offline));

    // The same installation, with warnings a year and a half ahead.
    drop(server);
    let server = Server::start(|c| c.expiry.offline_warning_secs = 550 * 86_400);
    let health: Health =
        serde_json::from_slice(&server.client(None).get("/api/v1/health").unwrap().ok().unwrap()).unwrap();
    assert_eq!(health.status, "warn");
    assert!(health.warnings.iter().any(|w| w.starts_with("root version 1 expires")), "{:?}", health.warnings);
    assert!(health.warnings.iter().any(|w| w.starts_with("approvals.production")), "{:?}", health.warnings);
    assert!(
        !health.warnings.iter().any(|w| w.starts_with("approvals.pilot")),
        "online roles are renewed, not warned about"
    );
}
