//! The Debian packages (`scripts/deb`): lintian finds nothing to warn about, systemd-analyze
//! verifies their units and scores the server's sandbox, and dpkg installs, upgrades, removes
//! and purges them in a throwaway Debian root (`scripts/debroot`), where the packaged server is
//! set up as its README.Debian says, as its own user, and answers on loopback.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{BIN, free_port, run_ok};

/// A Debian root in a temporary directory, entered with chroot.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    /// `chroot ROOT args…`, which must succeed; standard output and error together.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("chroot").arg(self.dir.path()).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "chroot {args:?}: {text}");
        text
    }

    /// `args` as the server's own user, the way README.Debian says to set it up, with /proc
    /// mounted (in a mount namespace of its own: nothing is left mounted). unshare, chroot and
    /// env each exec the next: the process spawned is the program itself.
    fn as_ringfence(&self, args: &[&str]) -> Command {
        let mut command = Command::new("unshare");
        command.arg(format!("--mount-proc={}", self.path("/proc").display()));
        command.args(["chroot", "--userspec=ringfence:ringfence"]).arg(self.dir.path());
        command.args(["env", "HOME=/var/lib/ringfence"]).args(args);
        command
    }

    fn run_as_ringfence(&self, args: &[&str]) -> String {
        run_ok(&mut self.as_ringfence(args))
    }

    /// `Status` and `Version` of a package, as dpkg-query says them.
    fn package(&self, name: &str) -> String {
        self.run(&["dpkg-query", "-W", "-f=${Status} ${Version}", name])
    }

    fn id_of(&self, database: &str, name: &str) -> u32 {
        let text = std::fs::read_to_string(self.path(database)).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no {name}"));
        line.split(':').nth(2).unwrap().parse().unwrap()
    }

    fn mode_and_owner(&self, inside: &str) -> (u32, u32, u32) {
        let meta = std::fs::metadata(self.path(inside)).unwrap_or_else(|e| panic!("{inside}: {e}"));
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
    }

    fn enabled(&self, unit: &str) -> bool {
        let link = self.path(&format!("/etc/systemd/system/multi-user.target.wants/{unit}"));
        std::fs::read_link(link).is_ok_and(|to| to == Path::new("/lib/systemd/system").join(unit))
    }
}

/// The packages of the programs these tests run (nothing is built: a build now could relink
/// them under other tests).
fn packages(out: &Path, version: &str) -> Vec<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deb");
    let bin_dir = Path::new(BIN).parent().unwrap();
    assert_eq!(crate::common::agent_bin().parent(), Some(bin_dir), "the agent beside the server");
    let printed = run_ok(
        Command::new(script).arg("--bin-dir").arg(bin_dir).args(["--fast", "--version", version, "--out"]).arg(out),
    );
    let debs: Vec<PathBuf> = printed.lines().map(PathBuf::from).collect();
    assert_eq!(debs.len(), 2, "{printed}");
    debs
}

/// `systemd-analyze security`'s overall exposure of `unit` in the root (0 best, 10 worst).
fn exposure(root: &Root, unit: &str) -> f64 {
    let text = root.run(&["systemd-analyze", "security", "--offline=true", "--no-pager", unit]);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    line.split(": ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap().parse().unwrap()
}

#[test]
fn the_debian_packages_pass_lintian_and_install_upgrade_remove_and_purge_in_a_throwaway_root() {
    let Some(tarball) = std::env::var_os("RINGFENCE_TEST_DEBROOT") else {
        // scripts/test makes the root (scripts/debroot) and installs lintian.
        assert!(std::env::var_os("RINGFENCE_REQUIRE_PACKAGES").is_none(), "RINGFENCE_TEST_DEBROOT is not set");
        eprintln!("skipped: no throwaway Debian root (RINGFENCE_TEST_DEBROOT; scripts/debroot makes one)");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let first = packages(&work.path().join("v1"), "0.1.0");
    let second = packages(&work.path().join("v2"), "0.1.0+upgrade");

    // lintian (Debian's own checks): no error, no warning.
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .args(&first)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lintian: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!said.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")), "{said}");

    let root = Root { dir: tempfile::tempdir().unwrap() };
    run_ok(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(root.dir.path()));
    for (dir, debs) in [("tmp/v1", &first), ("tmp/v2", &second)] {
        std::fs::create_dir_all(root.path(dir)).unwrap();
        for deb in debs.iter() {
            std::fs::copy(deb, root.path(dir).join(deb.file_name().unwrap())).unwrap();
        }
    }
    let inside = |dir: &str, debs: &[PathBuf]| -> Vec<String> {
        debs.iter().map(|d| format!("/{dir}/{}", d.file_name().unwrap().to_string_lossy())).collect()
    };

    // Install.
    let v1 = inside("tmp/v1", &first);
    let mut install = vec!["dpkg", "-i"];
    install.extend(v1.iter().map(String::as_str));
    root.run(&install);
    assert_eq!(root.package("ringfence"), "install ok installed 0.1.0");
    assert_eq!(root.package("ringfence-agent"), "install ok installed 0.1.0");
    let passwd = std::fs::read_to_string(root.path("/etc/passwd")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("ringfence:")).expect("the ringfence user");
    assert!(user.ends_with(":/var/lib/ringfence:/usr/sbin/nologin"), "{user}");
    let (uid, gid) = (root.id_of("/etc/passwd", "ringfence"), root.id_of("/etc/group", "ringfence"));
    assert!(uid < 1000, "a system user: {user}");
    assert_eq!(root.mode_and_owner("/etc/ringfence/ringfence.toml"), (0o640, 0, gid), "root's, read by the group");
    assert_eq!(root.mode_and_owner("/var/lib/ringfence"), (0o750, uid, gid));
    assert_eq!(root.mode_and_owner("/var/lib/ringfence-agent"), (0o700, 0, 0));
    assert_eq!(root.mode_and_owner("/usr/bin/ringfence").0, 0o755);
    assert!(root.enabled("ringfence.service") && root.enabled("ringfence-agent.service"), "enabled on install");

    // The units: verified (a unit with a mistake is not, so the check can fail), and the
    // server's sandbox scored.
    let verify = |units: &[&str]| {
        let out = Command::new("chroot")
            .arg(root.dir.path())
            .args(["systemd-analyze", "verify", "--man=no"])
            .args(units)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, complaints) =
        verify(&["/lib/systemd/system/ringfence.service", "/lib/systemd/system/ringfence-agent.service"]);
    assert!(ok && complaints.is_empty(), "{complaints}");
    let unit = std::fs::read_to_string(root.path("/lib/systemd/system/ringfence.service")).unwrap();
    std::fs::write(root.path("/tmp/broken.service"), unit.replace("Type=exec", "Type=sometimes")).unwrap();
    assert!(!verify(&["/tmp/broken.service"]).1.is_empty(), "systemd-analyze verify said nothing of a bad unit");
    let (server, agent) = (exposure(&root, "ringfence.service"), exposure(&root, "ringfence-agent.service"));
    eprintln!("systemd-analyze security: ringfence.service {server}, ringfence-agent.service {agent}");
    assert!(server <= 2.0, "the server's sandbox scores {server} (was 1.6)");
    // A unit with no protection at all scores 9.6; the agent's keeps what no installer needs.
    assert!(agent <= 9.0, "the agent keeps its few protections: {agent} (was 9.0)");

    // The packaged server, set up as README.Debian says, as its own user: init with the
    // package's configuration, the ceremony offline, import, serve.
    let said = root.run_as_ringfence(&["ringfence", "init", "--config", "/etc/ringfence/ringfence.toml"]);
    assert!(said.contains("Initialised /var/lib/ringfence"), "{said}");
    assert_eq!(root.mode_and_owner("/var/lib/ringfence/online-keys/timestamp.key"), (0o600, uid, gid));
    let offline = work.path().join("offline");
    std::fs::create_dir_all(&offline).unwrap();
    let ceremony = |args: &[&str]| run_ok(Command::new(BIN).current_dir(&offline).args(args));
    for name in ["root", "targets"] {
        ceremony(&["key", "generate", "--unencrypted", "--dir", ".", "--name", name]);
    }
    for name in ["snapshot", "timestamp"] {
        let public = root.path(&format!("/var/lib/ringfence/online-keys/{name}.pub.json"));
        std::fs::copy(public, offline.join(format!("{name}.pub.json"))).unwrap();
    }
    ceremony(&crate::installation::NEW_ROOT);
    ceremony(&["metadata", "sign", "1.root.json", "--key", "root.key"]);
    ceremony(&["metadata", "new-targets", "--out", "1.targets.json"]);
    ceremony(&["metadata", "sign", "1.targets.json", "--key", "targets.key"]);
    std::fs::create_dir_all(root.path("/tmp/ceremony")).unwrap();
    for file in ["1.root.json", "1.targets.json"] {
        std::fs::copy(offline.join(file), root.path(&format!("/tmp/ceremony/{file}"))).unwrap();
    }
    root.run_as_ringfence(&[
        "ringfence",
        "import",
        "--config",
        "/etc/ringfence/ringfence.toml",
        "--root",
        "/tmp/ceremony/1.root.json",
        "--targets",
        "/tmp/ceremony/1.targets.json",
    ]);
    assert!(root.path("/var/lib/ringfence/1.root.json").exists(), "the unit's condition is met once imported");
    let (device_port, admin_port) = (free_port(), free_port());
    let log = std::fs::File::create(work.path().join("serve.log")).unwrap();
    let mut served = root
        .as_ringfence(&[
            &format!("RINGFENCE_DEVICE_ADDR=127.0.0.1:{device_port}"),
            &format!("RINGFENCE_ADMIN_ADDR=127.0.0.1:{admin_port}"),
            "ringfence",
            "serve",
            "--config",
            "/etc/ringfence/ringfence.toml",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        let gone = served.try_wait().unwrap();
        if gone.is_some() || std::time::Instant::now() > deadline {
            let _ = served.kill();
            panic!(
                "the packaged server is not listening: {}",
                std::fs::read_to_string(work.path().join("serve.log")).unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ca = root.path("/var/lib/ringfence/tls/cert.pem");
    let device = ringfence_cli::http::Client::new(&format!("https://127.0.0.1:{device_port}"), None, &ca).unwrap();
    assert_eq!(device.get("/repo/metadata/1.root.json").unwrap().status, 200);
    let token = std::fs::read_to_string(root.path("/var/lib/ringfence/admin.token")).unwrap();
    let admin = ringfence_cli::http::Client::new(&format!("https://127.0.0.1:{admin_port}"), Some(token), &ca).unwrap();
    assert_eq!(admin.get("/api/v1/health").unwrap().status, 200);
    run_ok(Command::new("kill").arg(served.id().to_string()));
    assert!(served.wait().unwrap().code().is_some(), "stopped by its signal, and said so");
    root.run(&["ringfence-agent", "--help"]);

    // Upgrade: the administrator's edit of the configuration and choice to disable the agent
    // are kept; the repository is untouched.
    let config = root.path("/etc/ringfence/ringfence.toml");
    let edited = format!("{}# changed by the administrator\n", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, &edited).unwrap();
    root.run(&["systemctl", "disable", "ringfence-agent.service"]);
    assert!(!root.enabled("ringfence-agent.service"));
    let v2 = inside("tmp/v2", &second);
    let mut upgrade = vec!["dpkg", "--force-confold", "-i"];
    upgrade.extend(v2.iter().map(String::as_str));
    root.run(&upgrade);
    assert_eq!(root.package("ringfence"), "install ok installed 0.1.0+upgrade");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited, "the edit is kept");
    assert_eq!(root.mode_and_owner("/etc/ringfence/ringfence.toml"), (0o640, 0, gid));
    assert!(root.enabled("ringfence.service") && !root.enabled("ringfence-agent.service"), "choices kept");
    assert_eq!(root.mode_and_owner("/var/lib/ringfence/1.root.json").1, uid);

    // Remove: the programs go, the configuration and the repository stay.
    root.run(&["dpkg", "-r", "ringfence", "ringfence-agent"]);
    assert!(!root.path("/usr/bin/ringfence").exists() && !root.path("/usr/bin/ringfence-agent").exists());
    assert_eq!(root.package("ringfence"), "deinstall ok config-files 0.1.0+upgrade");
    assert!(config.exists() && root.path("/var/lib/ringfence/1.root.json").exists());

    // Purge: the configuration and the agent's state go; the repository (what devices trust)
    // and the user stay, for the administrator to remove by hand.
    root.run(&["dpkg", "-P", "ringfence", "ringfence-agent"]);
    assert!(!root.path("/etc/ringfence").exists());
    assert!(!root.path("/var/lib/ringfence-agent").exists());
    assert!(root.path("/var/lib/ringfence/1.root.json").exists());
    assert!(std::fs::read_to_string(root.path("/etc/passwd")).unwrap().contains("\nringfence:"));
    let leftovers =
        Command::new("find").arg(root.path("/etc/systemd")).args(["-name", "*ringfence*"]).output().unwrap();
    assert!(leftovers.stdout.is_empty(), "{}", String::from_utf8_lossy(&leftovers.stdout));
}
