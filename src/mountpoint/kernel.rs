//! Mounting onto, identifying, and detaching a mount through descriptors only.
//!
//! fuser's own mount(2) and umount2(2) take a path, which the kernel resolves
//! again at each call: a user who swaps a component of it in between (their
//! home is theirs to rename in) chooses what root mounts over or unmounts. Here
//! the new mount API attaches the FUSE superblock onto the directory descriptor
//! that was checked, and a detach goes through `/proc/self/fd/N`, which the
//! kernel resolves to exactly the mount that descriptor holds.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a 64-bit mount ID the kernel never reuses.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// A mount's identity: the ID never reused, and the one `/proc/self/mountinfo` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountId {
    /// Never reused while the machine runs (the listed ID where the kernel lacks it).
    pub unique: u64,
    /// The first field of `/proc/self/mountinfo` (reused after an unmount).
    pub listed: u64,
}

/// The mount `fd` lies in, and whether `fd` is that mount's root. From cached
/// attributes, so a dead FUSE mount answers too.
pub fn mount_of(fd: impl AsFd) -> rustix::io::Result<(MountId, bool)> {
    let fd = fd.as_fd();
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let listed = rustix::fs::statx(fd, "", flags, StatxFlags::MNT_ID)?;
    let is_root = listed
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
        && listed.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
    let unique = rustix::fs::statx(
        fd,
        "",
        flags,
        StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE),
    )
    .ok()
    .filter(|s| s.stx_mask & STATX_MNT_ID_UNIQUE != 0)
    .map_or(listed.stx_mnt_id, |s| s.stx_mnt_id);
    Ok((
        MountId {
            unique,
            listed: listed.stx_mnt_id,
        },
        is_root,
    ))
}

/// Detach the mount whose root `fd` is (`umount2(MNT_DETACH)` through the
/// descriptor). Lazy because our descriptor itself keeps the mount busy; the
/// kernel ends the superblock once the last file on it is closed.
pub fn detach(fd: impl AsFd) -> std::io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    rustix::mount::unmount(proc_path.as_str(), UnmountFlags::DETACH).map_err(Into::into)
}

/// What the FUSE superblock is created with.
pub struct FuseOptions<'a> {
    pub source: &'a str,
    pub subtype: &'a str,
}

/// A FUSE filesystem attached onto a directory.
pub struct FuseMount {
    /// `/dev/fuse`, connected to the new superblock: the session reads requests here.
    pub dev: OwnedFd,
    /// The mount itself (from `fsmount`): reading through it reaches this mount
    /// whatever happens to the path. Keeping it open keeps the mount busy.
    pub root: OwnedFd,
    pub id: MountId,
}

/// Create a FUSE superblock (read-only, `allow_other`, `default_permissions`,
/// `nosuid,nodev,noexec`) and attach it onto the directory `target` names.
pub fn mount_fuse(target: impl AsFd, options: &FuseOptions) -> std::io::Result<FuseMount> {
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let fs = rustix::mount::fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let set = |key: &str, value: &str| rustix::mount::fsconfig_set_string(&fs, key, value);
    set("source", options.source)?;
    set("subtype", options.subtype)?;
    set("fd", &dev.as_raw_fd().to_string())?;
    set("rootmode", "40000")?;
    set("user_id", "0")?;
    set("group_id", "0")?;
    rustix::mount::fsconfig_set_flag(&fs, "default_permissions")?;
    rustix::mount::fsconfig_set_flag(&fs, "allow_other")?;
    rustix::mount::fsconfig_set_flag(&fs, "ro")?;
    rustix::mount::fsconfig_create(&fs)?;
    let root = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    rustix::mount::move_mount(
        &root,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    let (id, _) = mount_of(&root)?;
    Ok(FuseMount { dev, root, id })
}
