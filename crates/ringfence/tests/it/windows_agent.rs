//! The Windows build of the agent, run under Wine against a real server on loopback: it
//! enrolls, checks in, verifies through TUF, installs an MSI (built here with `wixl`) through
//! Wine's msiexec, reports it installed, uninstalls it on an uninstall approval, and never
//! hands a tampered file to msiexec.
//!
//! `scripts/test` builds the executable (`scripts/windows-agent`) and sets
//! `RINGFENCE_WINDOWS_AGENT`, `RINGFENCE_WINDOWS_SHIM` and `RINGFENCE_REQUIRE_WINDOWS`; run
//! without them (a plain `cargo nextest run`), this test says it was skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

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
        std::fs::copy(exe, wine.bin.join("ringfence-agent.exe")).unwrap();
        std::fs::copy(shim, wine.bin.join("bcryptprimitives.dll")).unwrap();
        let out = wine.command("wineboot").arg("--init").output().unwrap();
        assert!(out.status.success(), "wineboot: {}", String::from_utf8_lossy(&out.stderr));
        Some(wine)
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
        let key = format!(r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\{product_code}");
        self.command("reg").args(["query", &key]).output().unwrap().status.success()
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // The prefix's wineserver outlives the programs by a few seconds; end it now.
        let _ = Command::new("wineserver").arg("-k").env("WINEPREFIX", &self.prefix).status();
    }
}

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
    let mut m: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/examples/hello.manifest.json")).unwrap();
    m["id"] = id.into();
    m["applicability"] = json!({"os": ["windows"], "architectures": ["x86_64"]});
    m["installer"] = json!({"module": "msi", "arguments": ["ALLUSERS=1"], "product_code": product_code});
    let manifest = msi.with_extension("json");
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    run_ok(server.cli().args(["publish", "--manifest"]).arg(&manifest).arg(msi));
    server.sign_all("publisher-acme");
}

const HELLO: &str = "{6F1E8A52-1C7B-4D1E-9C55-0D2A4E5B7A11}";
const SECOND: &str = "{7A2F9B63-2D8C-4E2F-8D66-1E3B5F6C8B22}";

#[test]
fn the_windows_agent_under_wine_installs_an_approved_msi_uninstalls_it_and_refuses_a_tampered_one() {
    let server = Server::start(|_| {});
    let Some(wine) = Wine::new(server.dir.path()) else { return };
    let work = server.dir.path().join("msi");
    let hello = build_msi(&work, "hello", HELLO, "RingfenceHello", "hello.txt", "hello from an MSI\n");
    publish_msi(&server, "acme-hello-msi", &hello, HELLO);
    assert!(server.approve("pilot", "acme/hello.msi").contains("is published"));

    // Enroll with the server's CA and root hash, as an administrator would on the device.
    let root_sha = ringfence_trust::sha256_hex(&std::fs::read(server.data.join("1.root.json")).unwrap());
    let base = server.repo_url.trim_end_matches("/repo").to_owned();
    let token = token(&server, "pilot", 1);
    let ca = windows_path(&server.ca);
    let (code, out) = wine.agent(&[
        "enroll",
        "--server",
        &base,
        "--root-sha256",
        &root_sha,
        "--group",
        "pilot",
        "--token",
        &token,
        "--ca",
        &ca,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(accepted)"), "{out}");
    assert!(wine.state().join("device.key").exists(), "state in %ProgramData%\\Ringfence");

    // One cycle: check-in, TUF refresh, the decision rule, download, msiexec.
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 0, "{out}");
    let installed = wine.drive_c().join("Program Files/RingfenceHello/hello.txt");
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), "hello from an MSI\n");
    assert!(wine.product_installed(HELLO));
    let log = wine.state().join("work/acme-hello-msi.install.log");
    assert!(log.exists(), "msiexec's verbose log is kept in the state directory");
    assert_eq!(last_report(&server, "approvals/pilot/acme/hello.msi").state, ReportState::Installed);
    let device = devices(&server).into_iter().next().unwrap();
    assert_eq!(device.inventory.os, "windows");
    assert!(device.inventory.os_version.split('.').count() >= 3, "major.minor.build: {:?}", device.inventory);
    let (code, status) = wine.agent(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("acme/hello.msi: installed"), "{status}");
    // The agent sets SYSTEM and Administrators only on its state directory and reads it back;
    // Wine keeps no ACLs (it reports its user and everyone), so the agent must say so.
    assert!(status.contains(r"state C:\ProgramData\Ringfence (D:"), "{status}");
    assert!(status.contains("reads back with the ACL") && status.contains("check who can read it"), "{status}");

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
    assert!(!wine.state().join("work/acme-second-msi.install.log").exists(), "msiexec never ran");
    assert!(!wine.drive_c().join("Program Files/RingfenceSecond").exists());
    assert!(!wine.product_installed(SECOND));
    assert!(installed.exists(), "what was installed stays");

    // An uninstall approval: msiexec /x by product code.
    run_ok(server.cli().args(["approve", "--group", "pilot", "--target", "acme/hello.msi", "--action", "uninstall"]));
    let (code, out) = wine.agent(&["check"]);
    assert_eq!(code, 3, "the tampered file is still refused: {out}");
    assert!(!installed.exists(), "removed by msiexec /x");
    assert!(!wine.product_installed(HELLO));
    assert_eq!(last_report(&server, "approvals/pilot/acme/hello.msi").state, ReportState::Uninstalled);
}
