//! Process hardening for a daemon that holds refresh tokens and client secrets.

use std::io;

/// Keep secrets out of core dumps and away from other processes: no core files,
/// and not dumpable (which also stops same-uid ptrace and makes `/proc/<pid>/mem`
/// root-only). Called first thing, before any secret is read.
pub fn harden() -> io::Result<()> {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments; they only change this process.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_core_dumps_and_not_dumpable() {
        super::harden().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: valid pointers to a local; reads this process's settings.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_CORE, &mut limit), 0);
            assert_eq!(libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
        }
        assert_eq!((limit.rlim_cur, limit.rlim_max), (0, 0));
    }
}
