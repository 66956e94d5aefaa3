//! The server renews what it signs online before it expires, and warns about offline roles.

use ringfence_proto::api::Health;
use ringfence_store::Store;

use crate::common::Server;

#[test]
fn online_metadata_is_renewed_when_half_its_lifetime_is_gone() {
    // Time is a parameter of `renew`: the test moves it instead of sleeping.
    let server = Server::start(|_| {});
    let repo = &server.state.repo;
    let latest = |role: &str| server.runtime.block_on(server.db.latest_metadata(role)).unwrap().unwrap();
    let renew = |at: i64| server.runtime.block_on(repo.renew(at)).unwrap();
    let now = ringfence_server::unix_now();
    let (ts, snap, pilot) = (latest("timestamp"), latest("snapshot"), latest("approvals.pilot"));
    assert!(renew(now).is_empty(), "nothing is due yet");
    assert_eq!(latest("timestamp").version, ts.version);

    // 13 hours on: the timestamp (1 day) is past half its lifetime, the snapshot (1 week) not.
    let later = now + 13 * 3600;
    let renewed: Vec<String> = renew(later).iter().map(|r| r.role.to_string()).collect();
    assert!(renewed.contains(&"timestamp".to_owned()), "{renewed:?}");
    let ts2 = latest("timestamp");
    assert!(ts2.version > ts.version && ts2.expires > ts.expires);
    assert!(!renewed.iter().any(|r| r == "approvals.pilot"), "{renewed:?}");

    // 20 days on: the online approval role (30 days) is renewed too, offline roles never.
    let much_later = now + 20 * 86_400;
    let renewed: Vec<String> = renew(much_later).iter().map(|r| r.role.to_string()).collect();
    assert!(renewed.contains(&"approvals.pilot".to_owned()), "{renewed:?}");
    assert!(latest("approvals.pilot").version > pilot.version);
    assert!(latest("snapshot").version > snap.version);
    assert!(!renewed.iter().any(|r| r == "approvals.production" || r == "targets"), "{renewed:?}");
    // What the server renewed still verifies as a client would check it, at that time.
    server.runtime.block_on(repo.self_check(much_later)).unwrap();
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
