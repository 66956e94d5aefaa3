//! The code map stays true: the crate layering ARCHITECTURE.md documents is the one Cargo
//! sees, and every file the map names under a crate exists.

use std::collections::BTreeMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The Ringfence crates a crate's `[dependencies]` name (by directory).
fn ringfence_dependencies(manifest: &str) -> Vec<String> {
    let value: toml::Value = toml::from_str(manifest).unwrap();
    let mut out = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(table) = value.get(section).and_then(|d| d.as_table()) {
            out.extend(table.keys().filter_map(|k| k.strip_prefix("ringfence-")).map(str::to_owned));
        }
    }
    out
}

#[test]
fn crates_depend_only_on_what_the_layering_allows() {
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("proto", &[][..]),
        ("trust", &["proto"][..]),
        ("tlog", &["trust"][..]),
        ("client-net", &[][..]),
        ("store", &[][..]),
        // A replica reaches its upstream as a client (the pinned-CA TLS of `client-net`).
        ("server", &["proto", "trust", "tlog", "store", "client-net"][..]),
        ("cli", &["proto", "trust", "tlog", "client-net"][..]),
        ("agent", &["proto", "trust", "tlog", "client-net"][..]),
        // The fleet simulator speaks to the server only as devices and an admin do.
        ("bench", &["proto", "trust", "client-net"][..]),
        // The binary reaches the store only through the server (tests may open it directly).
        ("ringfence", &["proto", "trust", "tlog", "server", "cli"][..]),
    ]);
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let deps = ringfence_dependencies(&manifest);
        assert!(!deps.iter().any(|d| d.is_empty()), "{name} depends on the binary crate");
        let allow = allowed.get(name.as_str()).unwrap_or_else(|| panic!("crate {name} is not in the layering"));
        for dep in &deps {
            assert!(allow.contains(&dep.as_str()), "{name} may not depend on {dep} (ARCHITECTURE.md, code map)");
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), allowed.len(), "every documented crate exists: {seen:?}");
}

#[test]
fn every_file_the_code_map_names_exists() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut crate_dir: Option<String> = None;
    let mut checked = 0;
    for line in map.lines() {
        if let Some(rest) = line.strip_prefix("### `crates/") {
            crate_dir = rest.split('`').next().map(str::to_owned);
            continue;
        }
        if line.starts_with("## ") || line.starts_with("### ") {
            crate_dir = None;
            continue;
        }
        let (Some(dir), Some(rest)) = (&crate_dir, line.strip_prefix("- `")) else { continue };
        let Some(file) = rest.split('`').next() else { continue };
        if !(file.ends_with(".rs") || file.ends_with('/')) {
            continue;
        }
        let base = root().join("crates").join(dir);
        let found = [base.join("src").join(file), base.join(file)].iter().any(|p| p.exists());
        assert!(found, "ARCHITECTURE.md names crates/{dir}/{{src/,}}{file}, which does not exist");
        checked += 1;
    }
    assert!(checked > 40, "the code map was read ({checked} files)");
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let heading = format!("### `crates/{name}`");
        let Some(start) = map.find(&heading) else { panic!("ARCHITECTURE.md has no section for crates/{name}") };
        let rest = &map[start + heading.len()..];
        let section = &rest[..rest.find("\n##").unwrap_or(rest.len())];
        for file in source_files(&dir.join("src")) {
            assert!(section.contains(&format!("- `{file}`")), "crates/{name}/src/{file} is not in the code map");
        }
    }
}

/// The `.rs` files under `dir`, as paths relative to it (`domain/repo/mod.rs`).
fn source_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// The server's domain layer is the one door to the store: outside `src/domain/`, only
/// `lib.rs`, which opens the store and hands it to the domain services, names the store crate.
#[test]
fn only_the_domain_layer_touches_the_store() {
    let src = root().join("crates/server/src");
    let files = source_files(&src);
    assert!(files.iter().any(|f| f.starts_with("domain/")), "the domain layer exists: {files:?}");
    for file in files {
        if file.starts_with("domain/") || file == "lib.rs" {
            continue;
        }
        let text = std::fs::read_to_string(src.join(&file)).unwrap();
        assert!(!text.contains("ringfence_store"), "crates/server/src/{file} reaches into the store");
    }
}
