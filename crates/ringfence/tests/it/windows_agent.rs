//! The Windows build of the agent, run under Wine against a real server on loopback: it
//! enrolls, checks in, verifies through TUF, installs an MSI (built here with `wixl`) through
//! Wine's msiexec, reports it installed, uninstalls it on an uninstall approval, and never
//! hands a tampered file to msiexec.
//!
//! `scripts/test` builds the executable (`scripts/windows-agent`) and sets
//! `RINGFENCE_WINDOWS_AGENT`, `RINGFENCE_WINDOWS_SHIM` and `RINGFENCE_REQUIRE_WINDOWS`; run
//! without them (a plain `cargo nextest run`), this test says it was skipped and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ringfence_proto::device::ReportState;
use serde_json::json;

use crate::agents::{devices, last_report, token};
use crate::common::{Server, blob_file, run_ok};

/// A Wine prefix of its own (a Windows installation in a directory), with the agent's
/// executable and the `ProcessPrng` shim side by side.
struct Wine {
    prefix: PathBuf,
    bin: PathBuf,
}

impl Wine {
    fn new(dir: &Path) -> Option<Wine> {
        let (Some(exe), Some(shim)) =
            (std::env::var_os("RINGFENCE_WINDOWS_AGENT"), std::env::var_os("RINGFENCE_WINDOWS_SHIM"))
        else {
            assert!(
                std::env::var_os("RINGFENCE_REQUIRE_WINDOWS").is_none(),
                "RINGFENCE_REQUIRE_WINDOWS is set but the Windows agent is not: run scripts/test"
            );
            eprintln!("skipped: no Windows agent (scripts/test builds it with scripts/windows-agent)");
            return None;
        };
        let wine = Wine { prefix: dir.join("wineprefix"), bin: dir.join("bin") };
        std::fs::create_dir_all(&wine.bin).unwrap();
        std::fs::create_dir_all(&wine.prefix).unwrap();
        std::fs::copy(exe, wine.bin.join("ringfence-agent.exe")).unwrap();
        wine.boot(true);
        // Windows 10 has ProcessPrng; this Wine gets it from the shim, system-wide, so that the
        // packaged agent runs as built.
        std::fs::copy(shim, wine.drive_c().join("windows/system32/bcryptprimitives.dll")).unwrap();
        Some(wine)
    }

    /// Start this Wine session: a persistent wineserver (without one, Wine ends its service
    /// manager and every service a few seconds after the last program exits, as if the
    /// computer shut down) and wineboot, whose standard streams the service manager keeps (not
    /// pipes that close when wineboot ends).
    fn boot(&self, init: bool) {
        let server = Command::new("wineserver").arg("-p").env("WINEPREFIX", &self.prefix).status().unwrap();
        assert!(server.success(), "wineserver -p: {server}");
        let mut wineboot = self.command("wineboot");
        if init {
            wineboot.arg("--init");
        }
        let status = wineboot.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(status.success(), "wineboot: {status}");
    }

    /// Start this Wine session again: its service manager reads the registry afresh.
    fn restart(&self) {
        let _ = Command::new("wineserver").arg("-k").env("WINEPREFIX", &self.prefix).status();
        let _ = Command::new("wineserver").arg("-w").env("WINEPREFIX", &self.prefix).status();
        self.boot(false);
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("wine");
        c.arg(program).env("WINEPREFIX", &self.prefix).env("WINEDEBUG", "-all").env_remove("DISPLAY");
        c
    }

    /// `ringfence-agent.exe ARGS` with its default state directory, `C:\ProgramData\Ringfence`:
    /// (exit code, stdout and stderr).
    fn agent(&self, args: &[&str]) -> (i32, String) {
        let out = self.command(&windows_path(&self.bin.join("ringfence-agent.exe"))).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    fn drive_c(&self) -> PathBuf {
        self.prefix.join("drive_c")
    }

    fn state(&self) -> PathBuf {
        self.drive_c().join("ProgramData/Ringfence")
    }

    /// Whether Windows lists `product_code` among installed programs (the uninstall key).
    fn product_installed(&self, product_code: &str) -> bool {
        self.registry_key(&format!(r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\{product_code}"))
            .is_some()
    }

    /// `reg query KEY`'s output, if the key exists.
    /// `reg query KEY`'s output, or `None` when reg says the key does not exist. Any other
    /// failure of `reg` (a Wine program that fails to start under load: one CI run saw a key
    /// vanish between two queries with nothing in between) is tried again twice, then fails
    /// the test with what reg said.
    fn registry_key(&self, key: &str) -> Option<String> {
        let mut said = Vec::new();
        for _ in 0..3 {
            let out = self.command("reg").args(["query", key]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return Some(stdout);
            }
            if stdout.contains("Unable to find") || stderr.contains("Unable to find") {
                return None;
            }
            said.push(format!("{:?}: {stdout}{stderr}", out.status));
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        panic!("reg query {key} failed three times: {said:?}");
    }

    /// `sc query RingfenceAgent`'s output, if the service exists.
    fn service(&self) -> Option<String> {
        self.registry_key(SERVICE_KEY)?;
        let out = self.command("sc").args(["query", "RingfenceAgent"]).output().unwrap();
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `msiexec ACTION PACKAGE /qn`, asserting it succeeds.
    fn msiexec(&self, action: &str, package: &Path) {
        let out = self.command("msiexec").args([action, &windows_path(package), "/qn"]).output().unwrap();
        assert!(out.status.success(), "msiexec {action}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // The prefix's wineserver outlives the programs by a few seconds; end it now.
        let _ = Command::new("wineserver").arg("-k").env("WINEPREFIX", &self.prefix).status();
    }
}

const SERVICE_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Services\RingfenceAgent";

/// A Linux path as Wine's drive Z: shows it.
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// An MSI built with `wixl` that installs `file_name` (holding `content`) into
/// `Program Files\<folder>`.
fn build_msi(work: &Path, name: &str, product_code: &str, folder: &str, file_name: &str, content: &str) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file_name), content).unwrap();
    // The component's GUID: the product code with its last group changed.
    let component = format!("{}C0FFEE000000}}", &product_code[..25]);
    let wxs = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="{product_code}" Name="Ringfence Test {name}" Language="1033" Version="1.0.0" Manufacturer="Acme"
           UpgradeCode="{{0B7C3F6E-2D4A-4B8F-8E61-3C9D5A7B1F22}}">
    <Package InstallerVersion="200" Compressed="yes" InstallScope="perMachine"/>
    <Media Id="1" Cabinet="files.cab" EmbedCab="yes"/>
    <Directory Id="TARGETDIR" Name="SourceDir">
      <Directory Id="ProgramFiles64Folder">
        <Directory Id="INSTALLDIR" Name="{folder}">
          <Component Id="Main" Guid="{component}" Win64="yes">
            <File Id="Payload" Source="{file_name}" KeyPath="yes"/>
            <RegistryValue Root="HKLM" Key="Software\Ringfence Test\{name}" Name="Greeting" Type="string" Value="[GREETING]"/>
          </Component>
        </Directory>
      </Directory>
    </Directory>
    <Feature Id="Main" Level="1"><ComponentRef Id="Main"/></Feature>
  </Product>
</Wix>
"#
    );
    std::fs::write(dir.join("package.wxs"), wxs).unwrap();
    let msi = dir.join(format!("{name}.msi"));
    run_ok(Command::new("wixl").current_dir(&dir).args(["-a", "x64", "-o"]).arg(&msi).arg("package.wxs"));
    msi
}

/// Publish `msi` as `acme/<file name>` with the `msi` module and its product code.
fn publish_msi(server: &Server, id: &str, msi: &Path, product_code: &str) {
    publish_msi_where(server, id, msi, product_code, json!({"os": ["windows"], "architectures": ["x86_64"]}));
}

/// `publish_msi` with these applicability rules.
fn publish_msi_where(server: &Server, id: &str, msi: &Path, product_code: &str, applicability: serde_json::Value) {
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["applicability"] = applicability;
    // GREETING (with spaces) ends up in the registry: the properties reach msiexec whole.
    let arguments = ["ALLUSERS=1", "GREETING=signed greeting, with spaces"];
    m["installer"] = json!({"module": "msi", "arguments": arguments, "product_code": product_code});
    let manifest = msi.with_extension("json");
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(msi));
    server.sign_all("publisher-acme");
}

/// `EXE enroll` into the default state directory with the server's CA, root hash and a token
/// for group pilot, as an administrator would on the device.
fn enroll(server: &Server, wine: &Wine, exe: &str) -> (i32, String) {
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(server.data.join("1.root.json")).unwrap());
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    let token = token(server, "pilot", 1);
    let ca = windows_path(&server.ca);
    let out = wine
        .command(exe)
        .args(["enroll", "--server", &base, "--root-sha256", &root_sha, "--group", "pilot", "--token", &token])
        .args(["--ca", &ca])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

const HELLO: &str = "{6F1E8A52-1C7B-4D1E-9C55-0D2A4E5B7A11}";
const SECOND: &str = "{7A2F9B63-2D8C-4E2F-8D66-1E3B5F6C8B22}";
const MISLABELLED: &str = "{9C4B1D85-4FAE-4A4B-AF88-3A5D7B8EAD44}";
const ADDON: &str = "{8B3A0C74-3E9D-4F3A-9E77-2F4C6A7D9C33}";

#[test]
fn the_windows_agent_under_wine_installs_approved_msis_as_they_apply_uninstalls_and_refuses_a_tampered_one() {
    let server = Server::start(|_| {});
    let Some(wine) = Wine::new(server.dir.path()) else { return };
    let work = server.dir.path().join("msi");
    // An add-on that applies only where Hello is installed (by Hello's product code).
    let addon = build_msi(&work, "addon", ADDON, "RingfenceAddon", "addon.txt", "add-on\n");
    let needs_hello = json!({"os": ["windows"], "products_installed": [HELLO]});
    publish_msi_where(&server, "acme-addon-msi", &addon, ADDON, needs_hello);
    assert!(server.approve("pilot", "acme/addon.msi").contains("is published"));

    // Enroll with the server's CA and root hash, as an administrator would on the device.
    let (code, out) = enroll(&server, &wine, &windows_path(&wine.bin.join("ringfence-agent.exe")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(accepted)"), "{out}");
    assert!(wine.state().join("device.key").exists(), "state in %ProgramData%\\Ringfence");
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 0, "not applicable is not a problem: {out}");
    let report = last_report(&server, "approvals/pilot/acme/addon.msi");
    assert_eq!(report.state, ReportState::NotApplicable);
    assert!(report.reason.as_deref().unwrap_or("").contains(&format!("needs product {HELLO}")), "{report:?}");
    let addon_file = wine.drive_c().join("Program Files/RingfenceAddon/addon.txt");
    assert!(!addon_file.exists());

    let hello = build_msi(&work, "hello", HELLO, "RingfenceHello", "hello.txt", "hello from an MSI\n");
    publish_msi(&server, "acme-hello-msi", &hello, HELLO);
    assert!(server.approve("pilot", "acme/hello.msi").contains("is published"));
    // One cycle: check-in, TUF refresh, the decision rule, download, msiexec.
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 0, "{out}");
    let installed = wine.drive_c().join("Program Files/RingfenceHello/hello.txt");
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), "hello from an MSI\n");
    assert!(wine.product_installed(HELLO));
    let greeting = wine.registry_key(r"HKLM\Software\Ringfence Test\hello").unwrap_or_default();
    assert!(greeting.contains("signed greeting, with spaces"), "{greeting}");
    let log = wine.state().join("work/install-acme-hello-msi.log");
    assert!(log.exists(), "msiexec's verbose log is kept in the state directory");
    assert_eq!(last_report(&server, "approvals/pilot/acme/hello.msi").state, ReportState::Installed);
    // The add-on's rules are looked at again once a day, not every cycle: a day later (its
    // record aged by hand) Hello is installed, so the add-on installs.
    assert!(!addon_file.exists());
    let record = wine.state().join("installed.json");
    let mut installed_json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(installed_json["acme/addon.msi"]["state"], "not_applicable");
    let at = installed_json["acme/addon.msi"]["at"].as_i64().unwrap();
    assert_eq!(installed_json["acme/addon.msi"]["retry_at"].as_i64().unwrap(), at + 86_400, "looked at again in a day");
    installed_json["acme/addon.msi"]["retry_at"] = json!(at - 1);
    std::fs::write(&record, serde_json::to_vec(&installed_json).unwrap()).unwrap();
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&addon_file).unwrap(), "add-on\n");
    assert_eq!(last_report(&server, "approvals/pilot/acme/addon.msi").state, ReportState::Installed);
    let device = devices(&server).into_iter().next().unwrap();
    assert_eq!(device.inventory.os, "windows");
    assert!(device.inventory.os_version.split('.').count() >= 3, "major.minor.build: {:?}", device.inventory);
    let (code, status) = wine.agent(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("acme/hello.msi: installed"), "{status}");
    // The agent sets owner Administrators and SYSTEM and Administrators only on its state
    // directory and reads them back; Wine keeps no ACLs (it reports its user and everyone), so
    // the agent must say so (on Windows it would refuse the directory).
    assert!(status.contains(r"state C:\ProgramData\Ringfence (O:"), "{status}");
    assert!(status.contains("warning: C:\\ProgramData\\Ringfence reads back as O:"), "{status}");
    assert!(status.contains("(Wine keeps no ACLs)"), "{status}");
    // And it looked at who owned the directory before it changed anything (Wine's user does:
    // on Windows a directory someone else made beforehand is refused).
    assert!(status.contains("exists and is owned by someone other than SYSTEM or Administrators"), "{status}");

    // A stolen server swaps the bytes of an approved MSI: refused, never given to msiexec.
    let second = build_msi(&work, "second", SECOND, "RingfenceSecond", "second.txt", "second\n");
    publish_msi(&server, "acme-second-msi", &second, SECOND);
    assert!(server.approve("pilot", "acme/second.msi").contains("is published"));
    let bytes = std::fs::read(&second).unwrap();
    let mut evil = bytes.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0xff;
    std::fs::write(blob_file(&server, &ringfence_trust::sha256_hex(&bytes)), &evil).unwrap();
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 3, "{out}");
    let report = last_report(&server, "approvals/pilot/acme/second.msi");
    assert_eq!(report.state, ReportState::Failed);
    assert!(report.reason.as_deref().unwrap_or("").contains("hash"), "{report:?}");
    assert!(!wine.state().join("work/install-acme-second-msi.log").exists(), "msiexec never ran");
    assert!(!wine.drive_c().join("Program Files/RingfenceSecond").exists());
    assert!(!wine.product_installed(SECOND));
    assert!(installed.exists(), "what was installed stays");

    // A package whose own ProductCode is not the one its publisher signed is not installed
    // (an uninstall by the signed code would otherwise remove something else).
    let mislabelled = build_msi(&work, "mislabelled", MISLABELLED, "RingfenceMislabelled", "m.txt", "m\n");
    publish_msi(&server, "acme-mislabelled-msi", &mislabelled, SECOND);
    assert!(server.approve("pilot", "acme/mislabelled.msi").contains("is published"));
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 3, "{out}");
    let report = last_report(&server, "approvals/pilot/acme/mislabelled.msi");
    assert_eq!(report.state, ReportState::Failed);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap_or("")
            .contains(&format!("ProductCode is {MISLABELLED}, not the signed {SECOND}")),
        "{report:?}"
    );
    assert!(!wine.state().join("work/install-acme-mislabelled-msi.log").exists(), "msiexec never ran");
    assert!(!wine.product_installed(MISLABELLED));

    // An uninstall approval: msiexec /x by product code.
    run_ok(server.cli().args(["approve", "--group", "pilot", "--target", "acme/hello.msi", "--action", "uninstall"]));
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 3, "the tampered file is still refused: {out}");
    assert!(!installed.exists(), "removed by msiexec /x");
    assert!(!wine.product_installed(HELLO));
    assert_eq!(last_report(&server, "approvals/pilot/acme/hello.msi").state, ReportState::Uninstalled);

    // The platform-neutral `file` module, to a Windows path.
    let notes = work.join("notes.txt");
    std::fs::write(&notes, "notes for Windows\n").unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = "acme-notes".into();
    m["applicability"] = json!({"os": ["windows"]});
    m["installer"] = json!({"module": "file", "arguments": [r"C:\Acme\notes.txt"]});
    std::fs::write(work.join("notes.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(work.join("notes.json")).arg(&notes));
    server.sign_all("publisher-acme");
    assert!(server.approve("pilot", "acme/notes.txt").contains("is published"));
    // Last, and in a cycle of its own: installed in the same cycle as an MSI, this step was
    // often followed by every Wine call taking seconds longer (not understood; see the notes).
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 3, "the tampered file is still refused: {out}");
    let placed = wine.drive_c().join("Acme/notes.txt");
    assert_eq!(std::fs::read_to_string(&placed).unwrap(), "notes for Windows\n");
    assert_eq!(last_report(&server, "approvals/pilot/acme/notes.txt").state, ReportState::Installed);
    // The `file` module removes what it placed, while it holds the bytes it installed.
    run_ok(server.cli().args(["approve", "--group", "pilot", "--target", "acme/notes.txt", "--action", "uninstall"]));
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 3, "{out}");
    assert!(!placed.exists());
    assert_eq!(last_report(&server, "approvals/pilot/acme/notes.txt").state, ReportState::Uninstalled);
}

/// The agent's own MSI (`packaging/windows/ringfence-agent.wxs`, as `scripts/windows-package`
/// builds it) installs the executable and the service; the service, started by the package and
/// enrolled afterwards, runs the same cycle as `run` and installs an approved MSI; it stops on
/// request and the package's removal takes the service with it. Then `service install` and
/// `service uninstall` do the same by hand.
#[test]
fn the_agent_package_installs_a_service_that_runs_the_cycle_and_stops_cleanly() {
    let server = Server::start(|_| {});
    let Some(wine) = Wine::new(server.dir.path()) else { return };
    let work = server.dir.path().join("msi");
    std::fs::create_dir_all(&work).unwrap();
    let package = work.join("ringfence-agent.msi");
    let wxs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/windows/ringfence-agent.wxs");
    // wixl takes sources relative to where it runs.
    run_ok(
        Command::new("wixl")
            .current_dir(&wine.bin)
            .args(["-a", "x64", "-D", "Version=0.1.0", "-D", "AgentExe=ringfence-agent.exe", "-o"])
            .arg(&package)
            .arg(&wxs),
    );
    let hello = build_msi(&work, "hello", HELLO, "RingfenceHello", "hello.txt", "hello from an MSI\n");
    publish_msi(&server, "acme-hello-msi", &hello, HELLO);
    assert!(server.approve("pilot", "acme/hello.msi").contains("is published"));

    // Deployed first (as Group Policy or Intune would), enrolled after. Wine 8's service manager
    // does not see a service that Wine's msi creates until it restarts (StartServices gets
    // 1060 from OpenServiceW, the install is rolled back: exit 1627, which Wine returns as 91),
    // so the first install is followed by a restart of this Wine session and a second install.
    // Real Windows does not do this (not tested here).
    let first = wine.command("msiexec").args(["/i", &windows_path(&package), "/qn"]).output().unwrap();
    if !first.status.success() {
        assert_eq!(first.status.code(), Some(91), "msiexec /i: {:?}", first.status);
        wine.restart();
        wine.msiexec("/i", &package);
    }
    let installed_exe = wine.drive_c().join("Program Files/Ringfence/ringfence-agent.exe");
    assert!(installed_exe.exists());
    let config = wine.registry_key(SERVICE_KEY).expect("the service is registered");
    assert!(config.contains(r"C:\Program Files\Ringfence\ringfence-agent.exe service run"), "{config}");
    assert!(config.contains("LocalSystem"), "{config}");
    assert!(wine.service().unwrap().contains("RUNNING"), "started by the package");
    let (code, out) = enroll(&server, &wine, r"C:\Program Files\Ringfence\ringfence-agent.exe");
    assert_eq!(code, 0, "{out}");

    // The service notices the enrollment and runs a cycle: the approved MSI is installed.
    let target = "approvals/pilot/acme/hello.msi";
    let installed = || {
        devices(&server)
            .first()
            .is_some_and(|d| d.updates.iter().any(|u| u.target == target && u.state == ReportState::Installed))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !installed() {
        if std::time::Instant::now() > deadline {
            let last = std::fs::read_to_string(wine.state().join("last-cycle.txt"));
            let log = std::fs::read_to_string(wine.state().join("service.log"));
            let listing: Vec<_> = std::fs::read_dir(wine.state()).unwrap().map(|e| e.unwrap().file_name()).collect();
            panic!(
                "the service installed nothing in 120 s: {:?}\nlast cycle {last:?}\nlog {log:?}\nstate {listing:?}\n{:?}",
                devices(&server),
                wine.service()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let file = wine.drive_c().join("Program Files/RingfenceHello/hello.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello from an MSI\n");

    // Stopped through the Service Control Manager: the service ends its loop and says so.
    let out = wine.command("sc").args(["stop", "RingfenceAgent"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !wine.service().unwrap().contains("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "{:?}", wine.service());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let stopped = wine.service().unwrap();
    assert!(stopped.contains("WIN32_EXIT_CODE    : 0") && stopped.contains("SERVICE_EXIT_CODE  : 0"), "{stopped}");
    // A service has no console: its lines are in the state directory.
    let log = std::fs::read_to_string(wine.state().join("service.log")).unwrap();
    for line in ["agent 0.1.0 started", "not enrolled yet", "enrolled: cycles start", "service stopped (exit 0)"] {
        assert!(log.contains(line), "{line:?} in {log}");
    }

    // Removing the package removes the service and the program, not the device's state.
    wine.msiexec("/x", &package);
    assert!(wine.service().is_none());
    assert!(!installed_exe.exists());
    assert!(wine.state().join("device.key").exists());
    assert!(file.exists(), "what the agent installed stays");

    // By hand: `service install` registers this executable with the state directory it is given.
    let (code, out) = wine.agent(&["service", "install"]);
    assert_eq!(code, 0, "{out}");
    let config = wine.registry_key(SERVICE_KEY).expect("registered");
    assert!(config.contains(r"ringfence-agent.exe service run --state-dir C:\ProgramData\Ringfence"), "{config}");
    let state = wine.service().expect("sc query sees the service reg query saw");
    assert!(state.contains("STOPPED"), "installed, not started: {state}");
    let (code, out) = wine.agent(&["service", "uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert!(wine.service().is_none());
    // `service run` outside the Service Control Manager says what to do instead.
    let (code, out) = wine.agent(&["service", "run"]);
    assert_ne!(code, 0);
    assert!(out.contains("not started by the Service Control Manager"), "{out}");
}
