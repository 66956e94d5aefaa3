//! Which approval governs a device, for each published file: one implementation, used by the
//! agent to act and (later) by the server to report what each device should have.
//!
//! A device follows the groups it was enrolled with; each group inherits from its ancestors
//! (top-level targets signs the parents, see `policy::lineage`).
//!
//! 1. **Through the hierarchy**, the nearest group wins: the first of the group, its parent,
//!    its grandparent … whose approval role lists the file decides for that group. A child
//!    overrides what it would inherit with any action, `decline` included.
//! 2. **Across the device's groups**, the decisions are ranked: the deeper deciding group wins
//!    (a specific group's decision beats a broad one's); at equal depth `install` beats
//!    `uninstall`, which beats `decline`; then the earlier deadline wins (none counts as the
//!    latest); then the group name, so the outcome never depends on the order of groups.

use std::cmp::Reverse;

use ringfence_proto::GroupName;
use ringfence_proto::tuf::ApprovalAction;

/// One group's decision about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    /// The group whose approval role lists the file.
    pub group: GroupName,
    /// How many ancestors that group has.
    pub depth: usize,
    pub action: ApprovalAction,
    /// Unix seconds, if the approval has a deadline.
    pub deadline: Option<i64>,
    /// Whatever the caller attaches (the verified entries).
    pub item: T,
}

/// For one device group's lineage (nearest first): what the first group that lists the file
/// says. `listing` answers `None` when a group does not list it, `Some(None)` when it lists
/// it in a way that was refused: that group still decides (nothing), and no ancestor's
/// decision comes through in its place.
pub fn nearest<T>(
    lineage: &[GroupName],
    listing: impl FnMut(&GroupName) -> Option<Option<Decision<T>>>,
) -> Option<Decision<T>> {
    lineage.iter().find_map(listing).flatten()
}

fn action_rank(action: ApprovalAction) -> u8 {
    match action {
        ApprovalAction::Install => 0,
        ApprovalAction::Uninstall => 1,
        ApprovalAction::Decline => 2,
    }
}

/// The decision that governs, among those of the device's groups (see the module's rules).
pub fn governing<T>(decisions: Vec<Decision<T>>) -> Option<Decision<T>> {
    decisions.into_iter().min_by(|a, b| {
        let key = |d: &Decision<T>| {
            (Reverse(d.depth), action_rank(d.action), d.deadline.unwrap_or(i64::MAX), d.group.as_str().to_owned())
        };
        key(a).cmp(&key(b))
    })
}

/// Whether an install with this deadline must happen now (its deadline has passed), rather than
/// when the device's own schedule allows.
pub fn deadline_passed(deadline: Option<i64>, now: i64) -> bool {
    deadline.is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn g(name: &str) -> GroupName {
        GroupName::parse(name).unwrap()
    }

    fn d(group: &str, depth: usize, action: ApprovalAction, deadline: Option<i64>) -> Decision<()> {
        Decision { group: g(group), depth, action, deadline, item: () }
    }

    use ApprovalAction::{Decline, Install, Uninstall};

    #[test]
    fn the_nearest_group_in_a_lineage_decides() {
        let lineage = [g("eu-web"), g("production"), g("all")];
        let listed = |group: &GroupName| match group.as_str() {
            "production" => Some(Some(d("production", 1, Decline, None))),
            "all" => Some(Some(d("all", 0, Install, None))),
            _ => None,
        };
        assert_eq!(nearest(&lineage, listed).map(|x| x.group), Some(g("production")));
        assert_eq!(nearest(&lineage, |_| None::<Option<Decision<()>>>), None);
        // A refused listing in the child decides nothing, and the parent's install does not
        // come through in its place.
        let refused_child = |group: &GroupName| match group.as_str() {
            "eu-web" => Some(None),
            _ => Some(Some(d(group.as_str(), 0, Install, None))),
        };
        assert_eq!(nearest(&lineage, refused_child), None);
    }

    #[test]
    fn deeper_then_install_then_earlier_deadline() {
        // The deeper group's uninstall beats a shallower install.
        let won = governing(vec![d("all", 0, Install, None), d("eu-web", 2, Uninstall, None)]).unwrap();
        assert_eq!((won.group.as_str(), won.action), ("eu-web", Uninstall));
        // At equal depth install beats uninstall beats decline.
        let won = governing(vec![d("a", 1, Decline, None), d("b", 1, Uninstall, None), d("c", 1, Install, None)]);
        assert_eq!(won.unwrap().action, Install);
        let won = governing(vec![d("a", 1, Decline, None), d("b", 1, Uninstall, None)]);
        assert_eq!(won.unwrap().action, Uninstall);
        // Then the earlier deadline; none counts as the latest.
        let won =
            governing(vec![d("a", 1, Install, None), d("b", 1, Install, Some(200)), d("c", 1, Install, Some(100))]);
        assert_eq!(won.unwrap().deadline, Some(100));
        assert_eq!(governing(Vec::<Decision<()>>::new()), None);
    }

    #[test]
    fn deadlines_pass_at_their_second() {
        assert!(!deadline_passed(None, i64::MAX));
        assert!(!deadline_passed(Some(100), 99));
        assert!(deadline_passed(Some(100), 100));
        assert!(deadline_passed(Some(100), 101));
    }

    fn decision() -> impl Strategy<Value = Decision<()>> {
        let action = prop_oneof![Just(Install), Just(Uninstall), Just(Decline)];
        ("[a-e]", 0usize..4, action, proptest::option::of(0i64..5)).prop_map(|(name, depth, action, deadline)| {
            Decision { group: GroupName::parse(&name).unwrap(), depth, action, deadline, item: () }
        })
    }

    proptest! {
        /// The outcome does not depend on the order of the device's groups, and nothing ranks
        /// above it by the documented rules.
        #[test]
        fn governing_is_order_free_and_maximal(mut all in proptest::collection::vec(decision(), 1..8)) {
            let won = governing(all.clone()).unwrap();
            all.reverse();
            prop_assert_eq!(governing(all.clone()).unwrap(), won.clone());
            for other in &all {
                prop_assert!(other.depth <= won.depth);
                if other.depth == won.depth {
                    prop_assert!(action_rank(other.action) >= action_rank(won.action));
                    if other.action == won.action {
                        prop_assert!(other.deadline.unwrap_or(i64::MAX) >= won.deadline.unwrap_or(i64::MAX));
                    }
                }
            }
        }
    }
}
