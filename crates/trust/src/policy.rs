//! Ringfence's layout rules and decision rule: one implementation, used by the agent before
//! it trusts, by the signer's review before it signs, and by the server before it prepares or
//! accepts a role version.
//!
//! A TUF client follows whatever delegations a signed role lists. Ringfence asks for more: a
//! file counts as published by `<p>` only when it is found through exactly
//! `targets → publisher.<p> → publisher.<p>.<bin>`, where `<bin>` is the hash prefix the
//! path falls in, and an approval counts only when found through exactly
//! `targets → approvals.<g>`. Every role on those paths must keep the layout:
//!
//! - `targets` delegates only `publisher.<p>` (paths exactly `<p>/*`) and `approvals.<g>`
//!   (paths exactly `approvals/<g>/*/*`), each name once, and lists no files itself;
//! - `publisher.<p>` delegates exactly its `16^n` bins (`publisher.<p>.<prefix>`, each with
//!   `path_hash_prefixes` exactly `[<prefix>]`, all prefixes of one length `n` in 1..=4, so
//!   they are disjoint and cover every hash), each with the publisher's own keys and
//!   threshold, terminating, and lists no files itself;
//! - bins and approval roles delegate nothing; a bin lists only `<p>/<file>` paths that hash
//!   into its prefix, an approval role only `approvals/<g>/<p>/<file>` paths.
//!
//! Anything else is refused with a [`LayoutError`] naming the rule.

use std::collections::{BTreeMap, BTreeSet};

use ringfence_proto::names::RoleKind;
use ringfence_proto::tuf::{ApprovalCustom, DelegatedRole, Key, TargetFile, Targets};
use ringfence_proto::{GroupName, PublisherName, RoleName, TargetPath};

use crate::client::TrustedSet;
use crate::keys::PublicKey;
use crate::paths::{bin_prefix_of, bin_prefixes};

/// The rules, by the names errors give them.
pub mod rule {
    pub const TOP_LEVEL_DELEGATES: &str = "targets delegates only publisher.<p> and approvals.<g> roles";
    pub const TOP_LEVEL_PATHS: &str = "a top-level delegation has exactly the layout's path pattern";
    pub const UNIQUE: &str = "each role is delegated once";
    pub const NO_FILES: &str =
        "targets and publisher roles list no files (top-level targets only the log's identity, ringfence/log.json)";
    pub const BINS: &str = "a publisher role delegates exactly its 16^n hashed bins";
    pub const BIN_KEYS: &str = "every bin has the publisher's keys and threshold";
    pub const BIN_TERMINATING: &str = "every bin delegation is terminating";
    pub const LEAF: &str = "bins and approval roles delegate nothing";
    pub const BIN_FILES: &str = "a bin lists only its publisher's files whose path hash is in its prefix";
    pub const APPROVAL_FILES: &str = "an approval role lists only approvals/<group>/<publisher>/<file> of its group";
    pub const ROLE_NAME: &str = "only Ringfence role names are signed";
    pub const APPROVAL: &str = "an approval carries the length, hashes and entry digest its publisher signed";
    pub const WINDOWS: &str = "only a group's approval role has maintenance windows, and they are valid";
    pub const GROUP_PARENT: &str =
        "only a group names a parent: another group targets delegates, without cycles, at most 8 deep";
}

/// Deepest group hierarchy accepted: a group has at most this many ancestors.
pub const MAX_GROUP_DEPTH: usize = 8;

/// A role version that breaks a layout rule, or an approval that breaks the decision rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{role} breaks the rule \"{rule}\": {detail}")]
pub struct LayoutError {
    pub role: String,
    pub rule: &'static str,
    pub detail: String,
}

fn broken(role: &str, rule: &'static str, detail: impl Into<String>) -> LayoutError {
    LayoutError { role: role.into(), rule, detail: detail.into() }
}

/// The longest bin prefix accepted: 65,536 bins.
pub const MAX_BIN_PREFIX_LEN: usize = 4;

/// Where top-level targets publishes the transparency log's identity (origin, log key,
/// witnesses and quorum) in the target's `custom`.
pub const LOG_IDENTITY_TARGET: &str = "ringfence/log.json";

/// Check top-level `targets`.
pub fn check_top_level(doc: &Targets) -> Result<(), LayoutError> {
    const ROLE: &str = "targets";
    if doc.windows.is_some() {
        return Err(broken(ROLE, rule::WINDOWS, "top-level targets has windows"));
    }
    // The one file top-level targets may list is the transparency log's identity, carried in
    // its `custom` (checked by the log's own code, which this crate does not depend on).
    let others =
        doc.targets.iter().filter(|(path, file)| path.as_str() != LOG_IDENTITY_TARGET || file.custom.is_none());
    if others.count() > 0 {
        return Err(broken(ROLE, rule::NO_FILES, format!("it lists {} files", doc.targets.len())));
    }
    let Some(delegations) = &doc.delegations else { return Ok(()) };
    let mut names = BTreeSet::new();
    for d in &delegations.roles {
        if !names.insert(d.name.as_str()) {
            return Err(broken(ROLE, rule::UNIQUE, format!("{} is delegated twice", d.name)));
        }
        let expected = match RoleName::parse(&d.name).map(|n| n.kind()) {
            Ok(RoleKind::Publisher(p)) => p.pattern(),
            Ok(RoleKind::Approval(g)) => g.approval_pattern(),
            _ => return Err(broken(ROLE, rule::TOP_LEVEL_DELEGATES, format!("it delegates {:?}", d.name))),
        };
        if d.paths.as_deref() != Some(std::slice::from_ref(&expected)) || d.path_hash_prefixes.is_some() {
            return Err(broken(
                ROLE,
                rule::TOP_LEVEL_PATHS,
                format!("{} must have paths [{expected:?}] and no path_hash_prefixes", d.name),
            ));
        }
    }
    check_hierarchy(delegations)
}

/// Parents name groups delegated here; following them ends within [`MAX_GROUP_DEPTH`] steps.
fn check_hierarchy(delegations: &ringfence_proto::tuf::Delegations) -> Result<(), LayoutError> {
    let refuse = |detail: String| Err(broken("targets", rule::GROUP_PARENT, detail));
    for d in &delegations.roles {
        let Some(parent) = &d.parent else { continue };
        let is_group = matches!(RoleName::parse(&d.name).map(|n| n.kind()), Ok(RoleKind::Approval(_)));
        let parent_role = GroupName::parse(parent).map(|g| g.approval_role());
        let delegated = parent_role.as_ref().is_ok_and(|r| delegations.roles.iter().any(|x| x.name == r.as_str()));
        if !is_group || !delegated {
            return refuse(format!("{} names parent {parent:?}, which is not a group delegated here", d.name));
        }
    }
    let parents: BTreeMap<&str, &str> =
        delegations.roles.iter().filter_map(|r| Some((r.name.as_str(), r.parent.as_deref()?))).collect();
    let parent_of = |name: &str| parents.get(name).map(|p| (*p).to_owned());
    for d in &delegations.roles {
        let mut seen = vec![d.name.clone()];
        let mut at = d.name.clone();
        while let Some(parent) = parent_of(&at) {
            let next = format!("approvals.{parent}");
            if seen.contains(&next) {
                return refuse(format!("{} is its own ancestor", next));
            }
            seen.push(next.clone());
            if seen.len() > MAX_GROUP_DEPTH + 1 {
                return refuse(format!("{} is more than {MAX_GROUP_DEPTH} groups deep", d.name));
            }
            at = next;
        }
    }
    Ok(())
}

/// Role names from `role` up through its parents, nearest first, stopping at a repeat or past
/// the depth bound (so it ends on any input; [`check_hierarchy`] refuses both).
fn lineage_of(delegations: &ringfence_proto::tuf::Delegations, role: &str) -> Vec<String> {
    let mut out = vec![role.to_owned()];
    let mut at = role.to_owned();
    while out.len() <= MAX_GROUP_DEPTH + 1 {
        let parent = delegations.roles.iter().find(|r| r.name == at).and_then(|r| r.parent.as_deref());
        let Some(next) = parent.and_then(|p| GroupName::parse(p).ok()).map(|g| g.approval_role().to_string()) else {
            break;
        };
        if out.contains(&next) {
            break;
        }
        out.push(next.clone());
        at = next;
    }
    out
}

/// `group` and its ancestors, nearest first, as top-level targets (checked with
/// [`check_top_level`]) declares them. A group targets does not delegate has no ancestors.
pub fn lineage(top: &Targets, group: &GroupName) -> Vec<GroupName> {
    let Some(delegations) = &top.delegations else { return vec![group.clone()] };
    lineage_of(delegations, group.approval_role().as_str())
        .iter()
        .filter_map(|role| role.strip_prefix("approvals.").and_then(|g| GroupName::parse(g).ok()))
        .collect()
}

/// How many ancestors `group` has (0 for a group without a parent).
pub fn depth(top: &Targets, group: &GroupName) -> usize {
    lineage(top, group).len().saturating_sub(1)
}

/// Top-level targets from a trusted set, checked against the layout (parents included).
pub fn top_level_targets(set: &TrustedSet) -> Result<&Targets, LayoutError> {
    top_level(set)
}

/// The public keys (by material) that `keyids` name in `keys`.
fn key_material(role: &str, keys: &BTreeMap<String, Key>, keyids: &[String]) -> Result<Vec<PublicKey>, LayoutError> {
    let mut out: Vec<PublicKey> = Vec::new();
    for id in keyids {
        let key = keys.get(id).ok_or_else(|| broken(role, rule::BIN_KEYS, format!("key {id} is not defined")))?;
        let public = PublicKey::from_tuf(key).map_err(|e| broken(role, rule::BIN_KEYS, format!("key {id}: {e}")))?;
        if !out.contains(&public) {
            out.push(public);
        }
    }
    Ok(out)
}

fn same_keys(a: &[PublicKey], b: &[PublicKey]) -> bool {
    a.len() == b.len() && a.iter().all(|k| b.contains(k))
}

/// Check `publisher.<p>` against the delegation top-level targets gives it (`delegation`,
/// with that document's `keys`). Returns the bin prefix length.
pub fn check_publisher(
    publisher: &PublisherName,
    doc: &Targets,
    delegation: &DelegatedRole,
    delegating_keys: &BTreeMap<String, Key>,
) -> Result<usize, LayoutError> {
    let role = publisher.role();
    if doc.windows.is_some() {
        return Err(broken(role.as_str(), rule::WINDOWS, "a publisher role has windows"));
    }
    let role = role.as_str();
    if !doc.targets.is_empty() {
        return Err(broken(role, rule::NO_FILES, format!("it lists {} files", doc.targets.len())));
    }
    let delegations = doc.delegations.as_ref().ok_or_else(|| broken(role, rule::BINS, "it delegates no bins"))?;
    let first = delegations.roles.first().ok_or_else(|| broken(role, rule::BINS, "it delegates no bins"))?;
    let len = first.path_hash_prefixes.as_ref().and_then(|p| p.first()).map_or(0, String::len);
    if len == 0 || len > MAX_BIN_PREFIX_LEN {
        return Err(broken(role, rule::BINS, format!("bin prefixes must be 1 to {MAX_BIN_PREFIX_LEN} hex digits")));
    }
    let want: BTreeSet<String> = bin_prefixes(len).into_iter().collect();
    if delegations.roles.len() != want.len() {
        return Err(broken(
            role,
            rule::BINS,
            format!("it delegates {} roles where {}-digit bins are {}", delegations.roles.len(), len, want.len()),
        ));
    }
    let publisher_keys = key_material(role, delegating_keys, &delegation.keyids)?;
    let mut seen = BTreeSet::new();
    for d in &delegations.roles {
        let prefix = match d.path_hash_prefixes.as_deref() {
            Some([p]) if d.paths.is_none() && want.contains(p) => p.clone(),
            _ => {
                return Err(broken(
                    role,
                    rule::BINS,
                    format!("{} must have path_hash_prefixes of exactly one {len}-digit prefix and no paths", d.name),
                ));
            }
        };
        if d.name != publisher.bin_role(&prefix).as_str() {
            return Err(broken(role, rule::BINS, format!("the bin for prefix {prefix:?} is named {:?}", d.name)));
        }
        if !seen.insert(prefix) {
            return Err(broken(role, rule::BINS, format!("{} is delegated twice", d.name)));
        }
        if !d.terminating {
            return Err(broken(role, rule::BIN_TERMINATING, format!("{} is not terminating", d.name)));
        }
        let bin_keys = key_material(role, &delegations.keys, &d.keyids)?;
        if d.threshold != delegation.threshold || !same_keys(&bin_keys, &publisher_keys) {
            return Err(broken(
                role,
                rule::BIN_KEYS,
                format!("{} has other keys or another threshold than {role}", d.name),
            ));
        }
    }
    Ok(len)
}

/// Check a bin (`publisher.<p>.<prefix>`) or an approval role (`approvals.<g>`).
pub fn check_leaf(role: &RoleName, doc: &Targets) -> Result<(), LayoutError> {
    let name = role.as_str();
    if doc.delegations.as_ref().is_some_and(|d| !d.roles.is_empty() || !d.keys.is_empty()) {
        return Err(broken(name, rule::LEAF, "it has delegations"));
    }
    match role.kind() {
        RoleKind::PublisherBin(publisher, prefix) => {
            if doc.windows.is_some() {
                return Err(broken(name, rule::WINDOWS, "a bin has windows"));
            }
            for path in doc.targets.keys() {
                let ok = TargetPath::parse(path).ok().and_then(|p| p.publisher()).as_ref() == Some(&publisher)
                    && bin_prefix_of(path, prefix.len()) == prefix;
                if !ok {
                    return Err(broken(name, rule::BIN_FILES, format!("it lists {path:?}")));
                }
            }
        }
        RoleKind::Approval(group) => {
            if let Some(windows) = &doc.windows {
                crate::windows::check_all(windows).map_err(|e| broken(name, rule::WINDOWS, e))?;
            }
            for path in doc.targets.keys() {
                let ok = TargetPath::parse(path).ok().and_then(|p| p.split_approval()).is_some_and(|(g, _)| g == group);
                if !ok {
                    return Err(broken(name, rule::APPROVAL_FILES, format!("it lists {path:?}")));
                }
            }
        }
        _ => return Err(broken(name, rule::ROLE_NAME, "not a bin or an approval role")),
    }
    Ok(())
}

/// Check a targets-type role version against the layout, given the top-level `targets` that
/// is (or will be) in force (needed for a publisher role's keys).
pub fn check_role(role: &RoleName, doc: &Targets, top_level: Option<&Targets>) -> Result<(), LayoutError> {
    match role.kind() {
        RoleKind::Targets => check_top_level(doc),
        RoleKind::Publisher(publisher) => {
            let top =
                top_level.ok_or_else(|| broken(role.as_str(), rule::BINS, "no top-level targets to check against"))?;
            let delegations = top.delegations.as_ref();
            let delegation = delegations
                .and_then(|d| d.roles.iter().find(|r| r.name == role.as_str()))
                .ok_or_else(|| broken(role.as_str(), rule::TOP_LEVEL_DELEGATES, "targets does not delegate it"))?;
            let keys = delegations.map(|d| &d.keys).ok_or_else(|| broken(role.as_str(), rule::BIN_KEYS, "no keys"))?;
            check_publisher(&publisher, doc, delegation, keys).map(|_| ())
        }
        RoleKind::PublisherBin(..) | RoleKind::Approval(_) => check_leaf(role, doc),
        RoleKind::Root | RoleKind::Snapshot | RoleKind::Timestamp => {
            Err(broken(role.as_str(), rule::ROLE_NAME, "not a targets-type role"))
        }
    }
}

/// One step of a lookup through a [`TrustedSet`]: load a role first, or the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Load delegated `role` as delegated by the role at chain `delegator`, then ask again.
    Load {
        role: String,
        delegator: String,
    },
    Done(T),
}

fn top_level(set: &TrustedSet) -> Result<&Targets, LayoutError> {
    let top = &set.targets("targets").ok_or_else(|| broken("targets", rule::ROLE_NAME, "not loaded"))?.signed;
    check_top_level(top)?;
    Ok(top)
}

/// The entry the publisher signed for `path`, found only through
/// `targets → publisher.<p> → publisher.<p>.<bin>` with every role on the way checked against
/// the layout. `Done(None)` when the publisher is not delegated or did not sign the path.
pub fn published_entry(set: &TrustedSet, path: &TargetPath) -> Result<Lookup<Option<TargetFile>>, LayoutError> {
    let Some(publisher) = path.publisher() else { return Ok(Lookup::Done(None)) };
    let top = top_level(set)?;
    let role = publisher.role();
    let Some(delegations) = &top.delegations else { return Ok(Lookup::Done(None)) };
    let Some(delegation) = delegations.roles.iter().find(|d| d.name == role.as_str()) else {
        return Ok(Lookup::Done(None));
    };
    let chain = TrustedSet::chain("targets", role.as_str());
    let Some(publisher_doc) = set.targets(&chain) else {
        return Ok(Lookup::Load { role: role.to_string(), delegator: "targets".into() });
    };
    let len = check_publisher(&publisher, &publisher_doc.signed, delegation, &delegations.keys)?;
    let bin = publisher.bin_role(&bin_prefix_of(path.as_str(), len));
    let bin_chain = TrustedSet::chain(&chain, bin.as_str());
    let Some(bin_doc) = set.targets(&bin_chain) else {
        return Ok(Lookup::Load { role: bin.to_string(), delegator: chain });
    };
    check_leaf(&bin, &bin_doc.signed)?;
    Ok(Lookup::Done(bin_doc.signed.targets.get(path.as_str()).cloned()))
}

/// Group `group`'s approval role, found only through `targets → approvals.<g>` and checked
/// against the layout. `Done(None)` when top-level targets does not delegate it.
pub fn approvals<'a>(set: &'a TrustedSet, group: &GroupName) -> Result<Lookup<Option<&'a Targets>>, LayoutError> {
    let top = top_level(set)?;
    let role = group.approval_role();
    if !top.delegations.as_ref().is_some_and(|d| d.roles.iter().any(|r| r.name == role.as_str())) {
        return Ok(Lookup::Done(None));
    }
    let chain = TrustedSet::chain("targets", role.as_str());
    let Some(doc) = set.targets(&chain) else {
        return Ok(Lookup::Load { role: role.to_string(), delegator: "targets".into() });
    };
    check_leaf(&role, &doc.signed)?;
    Ok(Lookup::Done(Some(&doc.signed)))
}

/// The decision rule's last step: the approval at `approval_path` carries exactly the length
/// and hashes of the publisher's entry, and pins the digest of that whole entry (installer,
/// arguments, health check, applicability). Returns the approval's fields.
pub fn check_approval(
    approval_path: &TargetPath,
    approval: &TargetFile,
    published: &TargetFile,
) -> Result<ApprovalCustom, LayoutError> {
    let name = approval_path.as_str();
    if approval.length != published.length || approval.hashes != published.hashes {
        return Err(broken(
            name,
            rule::APPROVAL,
            "the approved length and hashes are not the ones the publisher signed",
        ));
    }
    let custom = approval.custom.clone().ok_or_else(|| broken(name, rule::APPROVAL, "no approval fields"))?;
    let custom: ApprovalCustom =
        serde_json::from_value(custom).map_err(|e| broken(name, rule::APPROVAL, format!("approval fields: {e}")))?;
    if crate::writer::entry_digest(published) != custom.published_entry_sha256 {
        return Err(broken(
            name,
            rule::APPROVAL,
            "the publisher's entry (installer, arguments, applicability) is not the one the approvers approved",
        ));
    }
    Ok(custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use crate::writer::{self, Coverage, RoleKeySet};

    fn publisher() -> PublisherName {
        PublisherName::parse("acme").unwrap()
    }

    fn keys(seed: u8) -> RoleKeySet {
        RoleKeySet::new(vec![SigningKey::from_seed([seed; 32]).public()], 1)
    }

    fn top() -> Targets {
        let mut t = writer::targets(1, 2_000_000_000);
        writer::set_delegation(&mut t, "publisher.acme", &keys(1), Coverage::Patterns(vec!["acme/*".into()]), true);
        let group = GroupName::parse("production").unwrap();
        writer::set_delegation(
            &mut t,
            "approvals.production",
            &keys(2),
            Coverage::Patterns(vec![group.approval_pattern()]),
            true,
        );
        t
    }

    fn publisher_doc(len: usize) -> Targets {
        writer::publisher_role(&publisher(), &keys(1), len, 1, 2_000_000_000)
    }

    fn check(doc: &Targets) -> Result<(), LayoutError> {
        check_role(&publisher().role(), doc, Some(&top()))
    }

    /// `top()` with groups `names`, each the child of the one before.
    fn hierarchy(names: &[&str]) -> Targets {
        let mut t = top();
        let mut parent: Option<&str> = None;
        for name in names {
            let group = GroupName::parse(name).unwrap();
            let role = group.approval_role();
            if role.as_str() != "approvals.production" {
                let pattern = Coverage::Patterns(vec![group.approval_pattern()]);
                writer::set_delegation(&mut t, role.as_str(), &keys(3), pattern, true);
            }
            assert!(writer::set_parent(&mut t, role.as_str(), parent));
            parent = Some(name);
        }
        t
    }

    #[test]
    fn groups_form_a_signed_tree_and_lineage_follows_it() {
        let t = hierarchy(&["production", "eu", "eu-web"]);
        assert_eq!(check_top_level(&t), Ok(()));
        let names = |g: &str| -> Vec<String> {
            lineage(&t, &GroupName::parse(g).unwrap()).iter().map(|g| g.to_string()).collect()
        };
        assert_eq!(names("eu-web"), ["eu-web", "eu", "production"]);
        assert_eq!(names("production"), ["production"]);
        assert_eq!(names("unknown"), ["unknown"]);
        assert_eq!(depth(&t, &GroupName::parse("eu-web").unwrap()), 2);
        // Changing approvers keeps a group's place in the tree.
        let mut t2 = t.clone();
        let pattern = Coverage::Patterns(vec![GroupName::parse("eu").unwrap().approval_pattern()]);
        writer::set_delegation(&mut t2, "approvals.eu", &keys(4), pattern, true);
        assert_eq!(
            lineage(&t2, &GroupName::parse("eu-web").unwrap()),
            lineage(&t, &GroupName::parse("eu-web").unwrap())
        );
    }

    #[test]
    fn a_parent_is_a_delegated_group_without_cycles_or_excess_depth() {
        let refused = |t: &Targets| check_top_level(t).map_err(|e| e.rule);
        // A cycle: production's parent is its own grandchild.
        let mut cycle = hierarchy(&["production", "eu", "eu-web"]);
        writer::set_parent(&mut cycle, "approvals.production", Some("eu-web"));
        assert_eq!(refused(&cycle), Err(rule::GROUP_PARENT));
        // A parent targets does not delegate, and a parent on a publisher's delegation.
        let mut unknown = hierarchy(&["production"]);
        writer::set_parent(&mut unknown, "approvals.production", Some("nowhere"));
        assert_eq!(refused(&unknown), Err(rule::GROUP_PARENT));
        let mut on_publisher = hierarchy(&["production"]);
        writer::set_parent(&mut on_publisher, "publisher.acme", Some("production"));
        assert_eq!(refused(&on_publisher), Err(rule::GROUP_PARENT));
        let mut itself = hierarchy(&["production"]);
        writer::set_parent(&mut itself, "approvals.production", Some("production"));
        assert_eq!(refused(&itself), Err(rule::GROUP_PARENT));
        // Nine ancestors is one too many; eight is the bound.
        let names: Vec<String> = (0..=MAX_GROUP_DEPTH).map(|i| format!("g{i}")).collect();
        let mut chain: Vec<&str> = vec!["production"];
        chain.extend(names.iter().map(String::as_str));
        assert_eq!(refused(&hierarchy(&chain)), Err(rule::GROUP_PARENT));
        assert_eq!(refused(&hierarchy(&chain[..chain.len() - 1])), Ok(()));
    }

    /// Each case edits a valid publisher role and names the rule the edit breaks.
    #[test]
    fn publisher_roles_delegate_exactly_their_bins() {
        assert_eq!(check(&publisher_doc(1)), Ok(()));
        assert_eq!(check(&publisher_doc(2)), Ok(()));
        type Edit = fn(&mut Targets);
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "an extra all-paths delegation listed first",
                |t| {
                    let d = t.delegations.as_mut().unwrap();
                    let mut extra = d.roles[0].clone();
                    extra.name = "publisher.acme.f6c".into();
                    extra.path_hash_prefixes = Some(vec![String::new()]);
                    extra.terminating = false;
                    d.roles.insert(0, extra);
                },
                rule::BINS,
            ),
            (
                "a bin replaced by a wider prefix",
                |t| {
                    t.delegations.as_mut().unwrap().roles[0].path_hash_prefixes = Some(vec![String::new()]);
                },
                rule::BINS,
            ),
            (
                "two prefixes in one bin",
                |t| {
                    t.delegations.as_mut().unwrap().roles[0].path_hash_prefixes = Some(vec!["0".into(), "1".into()]);
                },
                rule::BINS,
            ),
            (
                "a bin missing",
                |t| {
                    t.delegations.as_mut().unwrap().roles.pop();
                },
                rule::BINS,
            ),
            (
                "a prefix duplicated, another left uncovered",
                |t| {
                    let d = t.delegations.as_mut().unwrap();
                    d.roles[1] = d.roles[0].clone();
                },
                rule::BINS,
            ),
            (
                "a bin under another name",
                |t| {
                    t.delegations.as_mut().unwrap().roles[0].name = "publisher.acme.x".into();
                },
                rule::BINS,
            ),
            (
                "a bin by paths",
                |t| {
                    t.delegations.as_mut().unwrap().roles[0].paths = Some(vec!["acme/*".into()]);
                },
                rule::BINS,
            ),
            (
                "a bin not terminating",
                |t| {
                    t.delegations.as_mut().unwrap().roles[3].terminating = false;
                },
                rule::BIN_TERMINATING,
            ),
            (
                "a bin with the server's key",
                |t| {
                    let d = t.delegations.as_mut().unwrap();
                    let server = SigningKey::from_seed([9; 32]).public();
                    d.keys.insert(server.key_id().to_string(), server.to_tuf());
                    d.roles[5].keyids = vec![server.key_id().to_string()];
                },
                rule::BIN_KEYS,
            ),
            (
                "a bin with a lower threshold",
                |t| {
                    t.delegations.as_mut().unwrap().roles[5].threshold = 0;
                },
                rule::BIN_KEYS,
            ),
            (
                "a file in the publisher role itself",
                |t| {
                    let file =
                        writer::target_file(1, &ringfence_proto::Sha256Hex::parse(&"a".repeat(64)).unwrap(), None);
                    t.targets.insert("acme/evil.txt".into(), file);
                },
                rule::NO_FILES,
            ),
        ];
        for (what, edit, expected) in cases {
            let mut doc = publisher_doc(1);
            edit(&mut doc);
            let err = check(&doc).expect_err(what);
            assert_eq!(err.rule, expected, "{what}: {err}");
        }
    }

    #[test]
    fn the_publisher_keys_may_be_written_under_other_ids() {
        // The same key under an id another implementation chose is still the publisher's key.
        let mut doc = publisher_doc(1);
        let d = doc.delegations.as_mut().unwrap();
        let key = d.keys.values().next().unwrap().clone();
        d.keys = BTreeMap::from([("publisher-key".to_owned(), key)]);
        d.roles.iter_mut().for_each(|r| r.keyids = vec!["publisher-key".into()]);
        assert_eq!(check(&doc), Ok(()));
    }

    #[test]
    fn top_level_targets_delegates_only_the_layout() {
        assert_eq!(check_top_level(&top()), Ok(()));
        type Edit = fn(&mut Targets);
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "a role outside the layout",
                |t| {
                    writer::set_delegation(t, "evil", &keys(9), Coverage::Patterns(vec!["*".into()]), false);
                },
                rule::TOP_LEVEL_DELEGATES,
            ),
            (
                "a publisher bin delegated from the top",
                |t| {
                    writer::set_delegation(
                        t,
                        "publisher.acme.0",
                        &keys(9),
                        Coverage::HashPrefixes(vec!["0".into()]),
                        true,
                    );
                },
                rule::TOP_LEVEL_DELEGATES,
            ),
            (
                "a publisher with a wider pattern",
                |t| {
                    t.delegations.as_mut().unwrap().roles[0].paths = Some(vec!["*/*".into()]);
                },
                rule::TOP_LEVEL_PATHS,
            ),
            (
                "an approval role covering another group",
                |t| {
                    t.delegations.as_mut().unwrap().roles[1].paths = Some(vec!["approvals/*/*/*".into()]);
                },
                rule::TOP_LEVEL_PATHS,
            ),
            (
                "a role delegated twice",
                |t| {
                    let d = t.delegations.as_mut().unwrap();
                    let again = d.roles[0].clone();
                    d.roles.push(again);
                },
                rule::UNIQUE,
            ),
            (
                "a file listed at the top",
                |t| {
                    let file =
                        writer::target_file(1, &ringfence_proto::Sha256Hex::parse(&"a".repeat(64)).unwrap(), None);
                    t.targets.insert("acme/x".into(), file);
                },
                rule::NO_FILES,
            ),
        ];
        for (what, edit, expected) in cases {
            let mut doc = top();
            edit(&mut doc);
            assert_eq!(check_top_level(&doc).expect_err(what).rule, expected, "{what}");
        }
    }

    #[test]
    fn bins_and_approvals_delegate_nothing_and_list_only_their_paths() {
        let file = writer::target_file(1, &ringfence_proto::Sha256Hex::parse(&"a".repeat(64)).unwrap(), None);
        let path = "acme/app.deb";
        let bin = publisher().bin_role(&bin_prefix_of(path, 1));
        let mut doc = writer::targets(1, 2_000_000_000);
        doc.targets.insert(path.into(), file.clone());
        assert_eq!(check_leaf(&bin, &doc), Ok(()));
        let other_bin = publisher().bin_role(if bin_prefix_of(path, 1) == "0" { "1" } else { "0" });
        assert_eq!(check_leaf(&other_bin, &doc).unwrap_err().rule, rule::BIN_FILES);
        let mut delegating = doc.clone();
        writer::set_delegation(&mut delegating, "x", &keys(9), Coverage::HashPrefixes(vec![String::new()]), false);
        assert_eq!(check_leaf(&bin, &delegating).unwrap_err().rule, rule::LEAF);

        let group = GroupName::parse("production").unwrap();
        let mut approvals = writer::targets(1, 2_000_000_000);
        approvals.targets.insert("approvals/production/acme/app.deb".into(), file.clone());
        assert_eq!(check_leaf(&group.approval_role(), &approvals), Ok(()));
        approvals.targets.insert("approvals/pilot/acme/app.deb".into(), file);
        assert_eq!(check_leaf(&group.approval_role(), &approvals).unwrap_err().rule, rule::APPROVAL_FILES);
    }

    #[test]
    fn an_approval_pins_length_hashes_and_the_whole_entry() {
        let sha = ringfence_proto::Sha256Hex::parse(&"a".repeat(64)).unwrap();
        let published = writer::target_file(3, &sha, Some(serde_json::json!({"installer": "x"})));
        let custom = ApprovalCustom {
            action: ringfence_proto::tuf::ApprovalAction::Install,
            deadline: None,
            reason: None,
            rollout: None,
            update_id: "u".into(),
            published_entry_sha256: writer::entry_digest(&published),
        };
        let mut approval = published.clone();
        approval.custom = Some(serde_json::to_value(&custom).unwrap());
        let path = TargetPath::parse("approvals/production/acme/a").unwrap();
        assert_eq!(check_approval(&path, &approval, &published).map(|c| c.update_id), Ok("u".into()));
        let mut other_installer = published.clone();
        other_installer.custom = Some(serde_json::json!({"installer": "y"}));
        assert!(check_approval(&path, &approval, &other_installer).is_err());
        let mut longer = approval.clone();
        longer.length = 4;
        assert!(check_approval(&path, &longer, &published).is_err());
        let mut no_fields = approval;
        no_fields.custom = None;
        assert!(check_approval(&path, &no_fields, &published).is_err());
    }
}
