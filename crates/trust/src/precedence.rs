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

/// What one group's approval role says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing<T> {
    Decides(Decision<T>),
    /// The group lists the file in a way that was refused (or its role could not be trusted):
    /// nobody may guess what it meant.
    Refused,
}

/// For one device group's lineage (nearest first): what the first group that lists the file
/// says. `listing` answers `None` when a group does not list it.
pub fn nearest<T>(lineage: &[GroupName], listing: impl FnMut(&GroupName) -> Option<Listing<T>>) -> Option<Listing<T>> {
    lineage.iter().find_map(listing)
}

fn action_rank(action: ApprovalAction) -> u8 {
    match action {
        ApprovalAction::Install => 0,
        ApprovalAction::Uninstall => 1,
        ApprovalAction::Decline => 2,
    }
}

/// The decision that governs, among what the device's groups' lineages say (see the module's
/// rules). None when any of them was refused: a withheld or broken override must not let a
/// broader approval through in its place.
pub fn governing<T>(listings: Vec<Listing<T>>) -> Option<Decision<T>> {
    let mut decisions = Vec::with_capacity(listings.len());
    for listing in listings {
        match listing {
            Listing::Decides(d) => decisions.push(d),
            Listing::Refused => return None,
        }
    }
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
            "production" => Some(Listing::Decides(d("production", 1, Decline, None))),
            "all" => Some(Listing::Decides(d("all", 0, Install, None))),
            _ => None,
        };
        assert_eq!(nearest(&lineage, listed), Some(Listing::Decides(d("production", 1, Decline, None))));
        assert_eq!(nearest(&lineage, |_| None::<Listing<()>>), None);
        // A refused listing in the child stands: the parent's install does not come through.
        let refused_child = |group: &GroupName| match group.as_str() {
            "eu-web" => Some(Listing::Refused),
            _ => Some(Listing::Decides(d(group.as_str(), 0, Install, None))),
        };
        assert_eq!(nearest(&lineage, refused_child), Some(Listing::Refused));
        // And it stops the other groups' decisions too.
        assert_eq!(governing(vec![Listing::Decides(d("all", 0, Install, None)), Listing::Refused]), None);
    }

    #[test]
    fn deeper_then_install_then_earlier_deadline() {
        let governing = |all: Vec<Decision<()>>| governing(all.into_iter().map(Listing::Decides).collect());
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
        assert_eq!(governing(Vec::new()), None);
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
            let listings = |all: &Vec<Decision<()>>| all.iter().cloned().map(Listing::Decides).collect();
            let won = governing(listings(&all)).unwrap();
            all.reverse();
            prop_assert_eq!(governing(listings(&all)).unwrap(), won.clone());
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
