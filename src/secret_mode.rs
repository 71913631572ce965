//! Which modes a private secret file (a client secret, a refresh token, a config
//! holding an inline secret) may have. Root reads it; the question is only who
//! else can.
//!
//! Never writable by its group, never open to others. Readable by its group
//! only when that group is none of the workload's (the files' owner): a
//! Kubernetes secret volume with a pod `fsGroup` is `defaultMode | 0440`, owned
//! `root:<fsGroup>`, and no chmod can change that. The container's processes
//! get the fsGroup as a supplementary group, but `tokenfs exec` drops every
//! supplementary group, so the workload keeps only its own gid; a secret whose
//! group is that gid (or any group the owner's passwd entry gives it at login)
//! would be the workload's to read.

use std::sync::OnceLock;

use crate::fs::Owner;

/// The files' owner and every group its processes can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub owner: Owner,
    groups: Vec<u32>,
    /// The passwd or group database could not say: any group may be the owner's.
    groups_unknown: bool,
}

impl Workload {
    /// The owner's gid as given and, if its uid has a passwd entry (a bare uid,
    /// as in a container, has none), the entry's gid and login groups.
    pub fn of(owner: Owner) -> Workload {
        match login_groups(owner) {
            Some(groups) => Workload::with_groups(owner, &groups),
            None => Workload {
                groups_unknown: true,
                ..Workload::with_groups(owner, &[])
            },
        }
    }

    pub fn with_groups(owner: Owner, extra: &[u32]) -> Workload {
        let mut groups = vec![owner.gid];
        groups.extend(extra.iter().filter(|g| **g != owner.gid));
        Workload {
            owner,
            groups,
            groups_unknown: false,
        }
    }

    pub fn holds(&self, gid: u32) -> bool {
        self.groups_unknown || self.groups.contains(&gid)
    }
}

/// Why a private file's mode is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Writable or executable by its group, or any access for others.
    Open,
    /// Readable by its group, and no owner is known to check the group against.
    GroupOwnerUnknown,
    /// Readable by a group the workload holds.
    WorkloadGroup,
}

/// Whether a private file with `mode` and group `gid` (its owner is root,
/// checked apart) is safe from `workload`; `None`: no owner known.
pub fn judge(mode: u32, gid: u32, workload: Option<&Workload>) -> Result<(), Refusal> {
    if mode & 0o037 != 0 {
        return Err(Refusal::Open);
    }
    if mode & 0o040 == 0 {
        return Ok(());
    }
    match workload {
        None => Err(Refusal::GroupOwnerUnknown),
        Some(w) if w.holds(gid) => Err(Refusal::WorkloadGroup),
        Some(_) => Ok(()),
    }
}

// Process-wide: one process serves one owner, and the secret files are read
// both while the config loads and at every reload after, far from where the
// owner is decided.
static WORKLOAD: OnceLock<Workload> = OnceLock::new();

/// Record the files' owner before any secret file is read; the first call wins.
pub fn set_workload(workload: Workload) {
    if let Some(set) = WORKLOAD.get() {
        if *set != workload {
            tracing::warn!(?set, ?workload, "the files' owner was already decided");
        }
        return;
    }
    let _ = WORKLOAD.set(workload);
}

/// The owner recorded by [`set_workload`], if any.
pub fn workload() -> Option<&'static Workload> {
    WORKLOAD.get()
}

/// The groups the system gives `owner.uid` at login: its passwd entry's gid and
/// the groups listing it (none without a passwd entry); `None` when a lookup
/// failed, so that a group-readable secret is refused rather than guessed safe.
fn login_groups(owner: Owner) -> Option<Vec<u32>> {
    use nix::unistd::{getgrouplist, User};
    let user = match User::from_uid(owner.uid.into()) {
        Ok(Some(user)) => user,
        Ok(None) => return Some(Vec::new()),
        Err(_) => return None,
    };
    let name = std::ffi::CString::new(user.name).ok()?;
    let groups = getgrouplist(&name, user.gid).ok()?;
    Some(groups.into_iter().map(|g| g.as_raw()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Owner = Owner {
        uid: 12574,
        gid: 12574,
    };

    #[test]
    fn owner_only_modes_are_fine_whatever_the_group() {
        let w = Workload::with_groups(ALICE, &[]);
        for mode in [0o400, 0o600, 0o700, 0o100400] {
            for gid in [0, 2000, ALICE.gid] {
                assert_eq!(judge(mode & 0o7777, gid, Some(&w)), Ok(()), "{mode:o}");
                assert_eq!(judge(mode & 0o7777, gid, None), Ok(()), "{mode:o}");
            }
        }
    }

    #[test]
    fn never_group_writable_nor_open_to_others() {
        let w = Workload::with_groups(ALICE, &[]);
        for mode in [
            0o444,
            0o404,
            0o604,
            0o640 | 0o002,
            0o660,
            0o620,
            0o450,
            0o401,
        ] {
            assert_eq!(judge(mode, 2000, Some(&w)), Err(Refusal::Open), "{mode:o}");
        }
    }

    #[test]
    fn group_readable_is_fine_only_for_a_group_the_workload_lacks() {
        // Kubernetes with fsGroup 2000: 0400 | 0440, root:2000.
        let w = Workload::with_groups(ALICE, &[]);
        assert_eq!(judge(0o440, 2000, Some(&w)), Ok(()));
        assert_eq!(judge(0o640, 2000, Some(&w)), Ok(()));
        // Root's group is not the workload's unless its gid is 0.
        assert_eq!(judge(0o440, 0, Some(&w)), Ok(()));
        let root_gid = Workload::with_groups(Owner { uid: 12574, gid: 0 }, &[]);
        assert_eq!(
            judge(0o440, 0, Some(&root_gid)),
            Err(Refusal::WorkloadGroup)
        );
        // fsGroup equal to the workload's gid, or one of its login groups.
        assert_eq!(
            judge(0o440, ALICE.gid, Some(&w)),
            Err(Refusal::WorkloadGroup)
        );
        let member = Workload::with_groups(ALICE, &[2000, 27]);
        assert_eq!(
            judge(0o440, 2000, Some(&member)),
            Err(Refusal::WorkloadGroup)
        );
        assert_eq!(judge(0o440, 27, Some(&member)), Err(Refusal::WorkloadGroup));
        assert_eq!(judge(0o440, 3000, Some(&member)), Ok(()));
        // No owner known: no group can be ruled out.
        assert_eq!(judge(0o440, 2000, None), Err(Refusal::GroupOwnerUnknown));
    }

    #[test]
    fn a_bare_uid_has_only_its_gid_and_a_passwd_entry_adds_its_groups() {
        // No passwd entry has this uid (the tests' workload).
        let bare = Workload::of(Owner {
            uid: 4343,
            gid: 4343,
        });
        assert!(bare.holds(4343) && !bare.holds(0) && !bare.holds(2000));
        // root has an entry everywhere; its login groups include its gid 0.
        let root = Workload::of(Owner { uid: 0, gid: 1234 });
        assert!(root.holds(1234) && root.holds(0), "{root:?}");
    }
}
