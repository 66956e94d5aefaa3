//! Windows: an ACL for SYSTEM and Administrators, the registry, PowerShell, the boot counter,
//! and the Service Control Manager.

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use windows_sys::Win32::Foundation::{
    ERROR_ALREADY_EXISTS, ERROR_MORE_DATA, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, GetSecurityDescriptorOwner, OWNER_SECURITY_INFORMATION,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
};
use windows_sys::Win32::Storage::FileSystem::{CreateDirectoryW, FILE_SHARE_READ};
use windows_sys::Win32::System::ApplicationInstallationAndServicing::{
    MSIDBOPEN_READONLY, MSIHANDLE, MsiCloseHandle, MsiDatabaseOpenViewW, MsiOpenDatabaseW, MsiRecordGetStringW,
    MsiViewExecute, MsiViewFetch,
};
use windows_sys::Win32::System::Com::CoTaskMemFree;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_READ, KEY_WOW64_32KEY, KEY_WOW64_64KEY, REG_SAM_FLAGS, RRF_RT_REG_DWORD,
    RRF_RT_REG_SZ, RegCloseKey, RegEnumKeyExW, RegGetValueW, RegOpenKeyExW,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemDirectoryW, GetTickCount64};
use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, KF_FLAG_DEFAULT, SHGetKnownFolderPath};

use super::Product;

/// `%ProgramData%\Ringfence`, from the known folder rather than the environment (a service's
/// environment need not have `ProgramData`, or the same one as an administrator's console).
pub fn default_state_dir() -> PathBuf {
    let mut path: *mut u16 = std::ptr::null_mut();
    // SAFETY: on success `path` is a NUL-terminated string the shell allocated, read up to its
    // NUL (at most 32,767 characters, the longest Windows path) and freed once; on failure it
    // is freed too, as the function's contract asks.
    let base = unsafe {
        let ok =
            SHGetKnownFolderPath(&FOLDERID_ProgramData, KF_FLAG_DEFAULT as u32, std::ptr::null_mut(), &mut path) == 0;
        let mut text = None;
        if ok && !path.is_null() {
            let len = (0..32_767).find(|&i| *path.add(i) == 0).unwrap_or(0);
            text = Some(String::from_utf16_lossy(std::slice::from_raw_parts(path, len)));
        }
        CoTaskMemFree(path.cast());
        text
    };
    base.filter(|b| !b.is_empty()).map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from).join("Ringfence")
}

fn wide(s: impl AsRef<OsStr>) -> Vec<u16> {
    s.as_ref().encode_wide().chain(std::iter::once(0)).collect()
}

fn win32(code: u32) -> std::io::Result<()> {
    if code == ERROR_SUCCESS { Ok(()) } else { Err(std::io::Error::from_raw_os_error(code as i32)) }
}

/// Owned by the Administrators group; full control for SYSTEM and Administrators, inherited by
/// everything inside, and nothing inherited from the parent: no other user can read the device
/// key or place a file the agent would use. The owner is set too: a user who created the
/// directory first (anyone may create folders in `C:\ProgramData`) would otherwise keep the
/// right to change its ACL back.
const PRIVATE_SDDL: &str = "O:BAD:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// Give a state directory its owner and protected DACL (`PRIVATE_SDDL`), read them back, and
/// refuse the directory when they did not hold; one that `existed` before this run must be
/// owned by SYSTEM or Administrators already. Under Wine, which keeps no ACLs, say so instead.
pub fn secure_dir(path: &Path, existed: bool) -> std::io::Result<()> {
    // What is there already is looked at before anything changes: a link or junction (which
    // would carry the ACL, and later the agent's files, elsewhere) is refused, and so is a
    // directory someone other than SYSTEM or Administrators owns (anyone may create folders in
    // C:\ProgramData: its contents, a config.json naming another server say, would be theirs).
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is a link or junction: refused", path.display()),
        ));
    }
    let before = access_of(path)?;
    if existed && !super::sddl_owner_is_trusted(&before) {
        refuse_or_warn(format!(
            "{} exists and is owned by someone other than SYSTEM or Administrators ({before}): remove it, or check who made it",
            path.display()
        ))?;
    }
    let descriptor = PrivateDescriptor::new()?;
    let (mut present, mut defaulted, mut owner_defaulted) = (0, 0, 0);
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut owner: PSID = std::ptr::null_mut();
    // SAFETY: the descriptor lives until the end of this function; the owner and DACL pointers
    // point into it and are used before it is freed; `name` is NUL-terminated.
    unsafe {
        if GetSecurityDescriptorDacl(descriptor.0, &mut present, &mut dacl, &mut defaulted) == 0
            || GetSecurityDescriptorOwner(descriptor.0, &mut owner, &mut owner_defaulted) == 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if present == 0 || dacl.is_null() || owner.is_null() {
            // A missing DACL would mean everyone has full control.
            return Err(std::io::Error::other("the private security descriptor has no DACL or owner"));
        }
        let name = wide(path);
        win32(SetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            owner,
            std::ptr::null_mut(),
            dacl,
            std::ptr::null(),
        ))?;
    }
    let set = access_of(path)?;
    if !super::sddl_is_private(&set) {
        refuse_or_warn(format!(
            "{} reads back as {set}, not owned by and open to SYSTEM and Administrators only",
            path.display()
        ))?;
    }
    Ok(())
}

/// Create `path` (its parent must exist) born private: owner Administrators and the protected
/// DACL from the moment it exists, so nobody can put anything in it first. `Ok(false)` when
/// it was there already (then `secure_dir` looks at who made it).
pub fn create_private_dir(path: &Path) -> std::io::Result<bool> {
    let descriptor = PrivateDescriptor::new()?;
    let name = wide(path);
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.0,
        bInheritHandle: 0,
    };
    // SAFETY: `name` is NUL-terminated; the descriptor outlives the call.
    let created = unsafe { CreateDirectoryW(name.as_ptr(), &attributes) } != 0;
    let error = std::io::Error::last_os_error();
    match created {
        true => Ok(true),
        false if error.raw_os_error() == Some(ERROR_ALREADY_EXISTS as i32) => Ok(false),
        false => Err(error),
    }
}

/// `PRIVATE_SDDL` as a security descriptor, freed when dropped.
struct PrivateDescriptor(PSECURITY_DESCRIPTOR);

impl PrivateDescriptor {
    fn new() -> std::io::Result<Self> {
        let sddl = wide(PRIVATE_SDDL);
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; on success the system allocated the descriptor,
        // which `Drop` frees once.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 { Err(std::io::Error::last_os_error()) } else { Ok(Self(descriptor)) }
    }
}

impl Drop for PrivateDescriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW, freed once.
        unsafe { LocalFree(self.0) };
    }
}

/// A Windows Installer handle, closed when dropped.
struct MsiHandle(MSIHANDLE);

impl Drop for MsiHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from the MSI API and is closed once.
        unsafe { MsiCloseHandle(self.0) };
    }
}

/// The `ProductCode` property of an MSI package, read from the package itself (read-only; the
/// package is closed again before this returns).
pub fn msi_product_code(path: &Path) -> std::io::Result<String> {
    let name = wide(path);
    let query = wide("SELECT `Value` FROM `Property` WHERE `Property` = 'ProductCode'");
    // SAFETY: both strings are NUL-terminated; every handle is closed by `MsiHandle`; the
    // value buffer holds `len` characters and the API writes at most that many.
    unsafe {
        let mut database = 0;
        win32(MsiOpenDatabaseW(name.as_ptr(), MSIDBOPEN_READONLY, &mut database))?;
        let database = MsiHandle(database);
        let mut view = 0;
        win32(MsiDatabaseOpenViewW(database.0, query.as_ptr(), &mut view))?;
        let view = MsiHandle(view);
        win32(MsiViewExecute(view.0, 0))?;
        let mut record = 0;
        win32(MsiViewFetch(view.0, &mut record))?;
        let record = MsiHandle(record);
        // A product code is 38 characters; anything longer is not one.
        let mut value = vec![0u16; 64];
        let mut len = value.len() as u32;
        win32(MsiRecordGetStringW(record.0, 1, value.as_mut_ptr(), &mut len))?;
        Ok(String::from_utf16_lossy(value.get(..len as usize).unwrap_or_default()))
    }
}

/// On Windows, refuse; under Wine, which keeps no ACLs and owns every file as its user, say
/// each kind of finding once and go on.
fn refuse_or_warn(message: String) -> std::io::Result<()> {
    if !under_wine() {
        return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, message));
    }
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let kind: String = message.split_once(' ').map_or("", |(_, rest)| rest).chars().take(24).collect();
    if let Ok(mut said) = SAID.lock()
        && !said.contains(&kind)
    {
        said.push(kind);
        crate::say(&format!("warning: {message} (Wine keeps no ACLs)"));
    }
    Ok(())
}

/// Whether this is Wine rather than Windows: Wine's ntdll exports `wine_get_version`.
fn under_wine() -> bool {
    let ntdll = wide("ntdll.dll");
    // SAFETY: both names are NUL-terminated; the module handle is not freed (GetModuleHandle
    // takes no reference) and the procedure is only looked up, never called.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// `System32\name`: Windows' own programs by full path, never found through a search that a
/// file planted beside the agent or early on `PATH` could win.
pub fn system_program(name: &str) -> PathBuf {
    let mut buffer = vec![0u16; 260];
    // SAFETY: `buffer` holds `len` characters; the system writes at most that many.
    let len = unsafe { GetSystemDirectoryW(buffer.as_mut_ptr(), buffer.len() as u32) } as usize;
    let dir = match buffer.get(..len) {
        Some(chars) if len > 0 => PathBuf::from(String::from_utf16_lossy(chars)),
        _ => PathBuf::from(r"C:\Windows\System32"),
    };
    dir.join(name)
}

/// Open a file for reading so that nobody can change, rename or delete it while it is open
/// (sharing read only): an installer reads exactly the bytes that were checked.
pub fn open_locked(path: &Path) -> std::io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    OpenOptions::new().read(true).share_mode(FILE_SHARE_READ).open(path)
}

/// The owner and DACL of `path` in SDDL, for `status` and tests.
pub fn access_of(path: &Path) -> std::io::Result<String> {
    let name = wide(path);
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; both outputs are LocalAlloc'd by the system and freed
    // here; the string's length is what the system reports.
    unsafe {
        win32(GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut descriptor,
        ))?;
        let mut text: *mut u16 = std::ptr::null_mut();
        let mut len = 0u32;
        let ok = ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor,
            SDDL_REVISION_1,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut text,
            &mut len,
        );
        let result = if ok == 0 {
            Err(std::io::Error::last_os_error())
        } else {
            let chars = std::slice::from_raw_parts(text, len as usize);
            let s = String::from_utf16_lossy(chars).trim_end_matches('\0').to_owned();
            LocalFree(text.cast());
            Ok(s)
        };
        LocalFree(descriptor);
        result
    }
}

/// A new file; it takes the state directory's inherited ACL.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Windows files have no mode: the `file` module's MODE argument is ignored, the file takes
/// its directory's ACL.
pub fn set_mode(_file: &File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Whether two metadata describe the same file. Stable Rust offers no file index on Windows,
/// so this compares creation time, last write and size: weaker than an inode check.
pub fn same_file(a: &Metadata, b: &Metadata) -> bool {
    (a.creation_time(), a.last_write_time(), a.file_size()) == (b.creation_time(), b.last_write_time(), b.file_size())
}

const CURRENT_VERSION: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";

/// Windows' boot counter (`PrefetchParameters\BootId`, Windows 8 and later), else the boot time
/// from the clock and the milliseconds since boot.
/// Whether this program's file was replaced since it started: on Windows a running program's
/// file cannot be replaced, and the MSI upgrade stops the service first.
pub fn program_replaced() -> bool {
    false
}

pub fn boot_mark() -> Option<String> {
    let counter = registry_dword(
        HKEY_LOCAL_MACHINE,
        0,
        r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management\PrefetchParameters",
        "BootId",
    );
    if let Some(n) = counter {
        return Some(format!("boot-counter:{n}"));
    }
    // SAFETY: no arguments, no preconditions.
    let since_boot = unsafe { GetTickCount64() } / 1000;
    Some(format!("boot-time:{}", crate::wall_clock().saturating_sub(since_boot as i64)))
}

/// PowerShell needs the `.ps1` extension to run a file.
pub const SCRIPT_EXTENSION: &str = "ps1";

/// An msiexec property argument, written as msiexec documents it: `NAME="VALUE"` (the value
/// has neither quotes nor a trailing backslash: `proto::api::is_msi_property`).
pub fn msi_property(command: &mut Command, name: &str, value: &str) {
    use std::os::windows::process::CommandExt;
    command.raw_arg(format!("{name}=\"{value}\""));
}

/// The `script` module: the file run by Windows PowerShell. Its execution policy is bypassed for
/// this one file because the agent checked it against the publisher's signed hash already.
pub fn script_command(file: &Path) -> Command {
    let mut command = Command::new(system_program(r"WindowsPowerShell\v1.0\powershell.exe"));
    command.args(["-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"]).arg(file);
    command
}

/// `major.minor.build.revision`, e.g. `10.0.19045.3803`, from the registry (which, unlike
/// `GetVersionEx`, is not shimmed to an older version).
pub fn os_version() -> String {
    let major = registry_dword(HKEY_LOCAL_MACHINE, 0, CURRENT_VERSION, "CurrentMajorVersionNumber");
    let minor = registry_dword(HKEY_LOCAL_MACHINE, 0, CURRENT_VERSION, "CurrentMinorVersionNumber");
    let base = match (major, minor) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => registry_string(HKEY_LOCAL_MACHINE, 0, CURRENT_VERSION, "CurrentVersion").unwrap_or_default(),
    };
    let build = registry_string(HKEY_LOCAL_MACHINE, 0, CURRENT_VERSION, "CurrentBuildNumber");
    let revision = registry_dword(HKEY_LOCAL_MACHINE, 0, CURRENT_VERSION, "UBR");
    let mut version = base;
    for part in [build, revision.map(|r| r.to_string())].into_iter().flatten() {
        version.push('.');
        version.push_str(&part);
    }
    version
}

pub fn hostname() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_default()
}

const UNINSTALL: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
/// Bounds on what is read from the registry: keys per view, characters per name or value.
const MAX_PRODUCTS: u32 = 8192;
const MAX_REGISTRY_CHARS: usize = 4096;

/// The uninstall keys of both registry views: what Programs and Features lists.
pub fn installed_products() -> Vec<Product> {
    let mut out: Vec<Product> = Vec::new();
    for view in [KEY_WOW64_64KEY, KEY_WOW64_32KEY] {
        let Some(key) = open_key(HKEY_LOCAL_MACHINE, UNINSTALL, KEY_READ | view) else { continue };
        for index in 0..MAX_PRODUCTS {
            let mut name = vec![0u16; 256];
            let mut len = name.len() as u32;
            // SAFETY: `name` holds `len` characters; the system writes at most that many.
            let rc = unsafe {
                RegEnumKeyExW(
                    key.0,
                    index,
                    name.as_mut_ptr(),
                    &mut len,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if rc == ERROR_NO_MORE_ITEMS {
                break;
            }
            if rc != ERROR_SUCCESS {
                continue;
            }
            let sub = String::from_utf16_lossy(name.get(..len as usize).unwrap_or_default());
            let value = |v: &str| registry_string(key.0, 0, &sub, v).unwrap_or_default();
            let product = Product { name: value("DisplayName"), version: value("DisplayVersion"), key: sub.clone() };
            if !out.iter().any(|p| p.key.eq_ignore_ascii_case(&product.key)) {
                out.push(product);
            }
        }
    }
    out
}

struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegOpenKeyExW and is closed once.
        unsafe { RegCloseKey(self.0) };
    }
}

fn open_key(parent: HKEY, path: &str, access: REG_SAM_FLAGS) -> Option<Key> {
    let path = wide(path);
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated; `key` receives a handle closed by `Key`'s drop.
    let rc = unsafe { RegOpenKeyExW(parent, path.as_ptr(), 0, access, &mut key) };
    (rc == ERROR_SUCCESS).then_some(Key(key))
}

fn registry_string(parent: HKEY, flags: u32, path: &str, value: &str) -> Option<String> {
    let (path, value) = (wide(path), wide(value));
    let mut buffer = vec![0u16; 256];
    loop {
        let mut bytes = (buffer.len() * 2) as u32;
        // SAFETY: both names are NUL-terminated; `buffer` holds `bytes` bytes.
        let rc = unsafe {
            RegGetValueW(
                parent,
                path.as_ptr(),
                value.as_ptr(),
                RRF_RT_REG_SZ | flags,
                std::ptr::null_mut(),
                buffer.as_mut_ptr().cast(),
                &mut bytes,
            )
        };
        if rc == ERROR_MORE_DATA && (bytes as usize) / 2 <= MAX_REGISTRY_CHARS && (bytes as usize) / 2 > buffer.len() {
            buffer.resize((bytes as usize).div_ceil(2), 0);
            continue;
        }
        if rc != ERROR_SUCCESS {
            return None;
        }
        let chars = buffer.get(..(bytes as usize) / 2).unwrap_or_default();
        return Some(String::from_utf16_lossy(chars).trim_end_matches('\0').to_owned());
    }
}

fn registry_dword(parent: HKEY, flags: u32, path: &str, value: &str) -> Option<u32> {
    let (path, value) = (wide(path), wide(value));
    let mut data = 0u32;
    let mut bytes = 4u32;
    // SAFETY: both names are NUL-terminated; `data` holds the 4 bytes a DWORD needs.
    let rc = unsafe {
        RegGetValueW(
            parent,
            path.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_DWORD | flags,
            std::ptr::null_mut(),
            (&mut data as *mut u32).cast(),
            &mut bytes,
        )
    };
    (rc == ERROR_SUCCESS).then_some(data)
}

/// `ringfence-agent service install|uninstall|run`: the agent under the Service Control Manager.
pub mod service {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use anyhow::Context;
    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept, ServiceErrorControl,
        ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
        ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    use super::super::RunLoop;

    pub const NAME: &str = "RingfenceAgent";
    const DISPLAY_NAME: &str = "Ringfence Agent";
    const DESCRIPTION: &str =
        "Installs the updates the approvers of this device's groups signed, checked through TUF; nothing else.";

    /// Register the service: started automatically, as LocalSystem, restarted after a crash.
    pub fn install(state_dir: &Path) -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CREATE_SERVICE)
            .context("opening the Service Control Manager (run as an administrator)")?;
        let info = ServiceInfo {
            name: NAME.into(),
            display_name: DISPLAY_NAME.into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: std::env::current_exe().context("finding this executable")?,
            launch_arguments: vec!["service".into(), "run".into(), "--state-dir".into(), state_dir.into()],
            dependencies: vec![],
            account_name: None,
            account_password: None,
        };
        let service = manager
            .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
            .context("creating the service")?;
        service.set_description(DESCRIPTION).context("describing the service")?;
        let restart =
            |secs| ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(secs) };
        service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
                reboot_msg: None,
                command: None,
                actions: Some(vec![restart(60), restart(300), restart(900)]),
            })
            .context("setting the service's restart on failure")?;
        Ok(())
    }

    /// Stop the service if it runs, then remove it.
    pub fn uninstall() -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .context("opening the Service Control Manager (run as an administrator)")?;
        let service = manager
            .open_service(NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)
            .context("opening the service")?;
        if service.query_status().context("querying the service")?.current_state != ServiceState::Stopped {
            service.stop().context("stopping the service")?;
            for _ in 0..60 {
                if service.query_status()?.current_state == ServiceState::Stopped {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        service.delete().context("deleting the service")?;
        Ok(())
    }

    static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();
    static CYCLES: OnceLock<RunLoop> = OnceLock::new();

    windows_service::define_windows_service!(ffi_service_main, service_main);

    /// Hand this process to the Service Control Manager, which calls `service_main`.
    pub fn run(state_dir: &Path, cycles: RunLoop) -> anyhow::Result<()> {
        let _ = STATE_DIR.set(state_dir.to_path_buf());
        let _ = CYCLES.set(cycles);
        windows_service::service_dispatcher::start(NAME, ffi_service_main)
            .context("not started by the Service Control Manager (use `ringfence-agent run` in a console)")
    }

    fn status(state: ServiceState, exit: u32) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: if exit == 0 { ServiceExitCode::Win32(0) } else { ServiceExitCode::ServiceSpecific(exit) },
            checkpoint: 0,
            wait_hint: Duration::default(),
            process_id: None,
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        static STOP: AtomicBool = AtomicBool::new(false);
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                STOP.store(true, Ordering::SeqCst);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(handle) = service_control_handler::register(NAME, handler) else { return };
        let _ = handle.set_service_status(status(ServiceState::Running, 0));
        // Sleeps in short steps and looks at the flag the control handler sets: a stop is
        // noticed within a quarter of a second.
        let wait = |d: Duration| {
            let until = std::time::Instant::now() + d;
            while !STOP.load(Ordering::SeqCst) {
                let now = std::time::Instant::now();
                if now >= until {
                    return false;
                }
                std::thread::sleep((until - now).min(Duration::from_millis(250)));
            }
            true
        };
        let result = match (STATE_DIR.get(), CYCLES.get()) {
            (Some(dir), Some(cycles)) => cycles(dir, &wait),
            _ => Err(anyhow::anyhow!("service started without its state directory")),
        };
        let exit = match result {
            Ok(()) => 0,
            Err(e) => {
                crate::say(&format!("error: {e:#}"));
                1
            }
        };
        crate::say(&format!("service stopped (exit {exit})"));
        let _ = handle.set_service_status(status(ServiceState::Stopped, exit));
    }
}
