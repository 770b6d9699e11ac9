//! The one walk of a socket's path, for the proxy (before it serves a socket, as root)
//! and for both guest kinds (before they trust the server of a socket).
//!
//! A path is walked from `/` one component at a time, each opened `O_PATH|O_NOFOLLOW`
//! relative to the directory before it: a symbolic link is opened itself, read, and its
//! target walked in turn, so that every link and every directory on the way is seen by
//! the caller's [`Visitor`], which judges each (owner, mode) and may refuse. Nothing is
//! ever looked up by a whole path, so nobody can swap a step between the check and the
//! use. At most [`MAX_LINKS`] links are followed (the kernel's own limit).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed while walking one path (the kernel's own limit).
pub const MAX_LINKS: u32 = 40;
/// The sticky bit of a directory's mode.
pub const STICKY: u32 = 0o1000;

/// What `fstat` said of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepStat {
    /// Device of the file system.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
}

impl StepStat {
    /// The part of `st` the path checks use.
    pub fn from_stat(st: &libc::stat) -> StepStat {
        StepStat { dev: st.st_dev, ino: st.st_ino, uid: st.st_uid, gid: st.st_gid, mode: st.st_mode }
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }

    /// A unix socket.
    pub fn is_socket(&self) -> bool {
        self.kind() == libc::S_IFSOCK
    }

    /// The same file (device and inode) as `other`.
    pub fn same_file(&self, other: &StepStat) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// Its group or others may write it.
    pub fn writable_by_others(&self) -> bool {
        self.mode & 0o022 != 0
    }

    /// A directory that its group or others may write and that is not sticky: whoever
    /// can write it could replace what is in it.
    pub fn open_to_others(&self) -> bool {
        self.writable_by_others() && self.mode & STICKY == 0
    }
}

/// A directory reached by the walk, held open.
#[derive(Debug)]
pub struct WalkedDir {
    /// Opened `O_PATH` by the walk (or by the visitor that made it).
    pub fd: OwnedFd,
    /// Its path as walked (for messages).
    pub shown: PathBuf,
    /// What `fstat` said of it.
    pub stat: StepStat,
}

/// One directory or link the walk reached, as its [`Visitor`] sees it.
#[derive(Debug)]
pub struct Step<'a> {
    /// Its path as walked (for messages).
    pub shown: &'a Path,
    /// What `fstat` said of it.
    pub stat: &'a StepStat,
    /// The directory it is in (`None` for `/`).
    pub parent: Option<&'a WalkedDir>,
}

/// Why a walk failed, apart from a visitor's refusal.
#[derive(Debug)]
pub enum WalkFailure {
    /// The current directory of a relative path cannot be found.
    CurrentDir(io::Error),
    /// `what` ("open", "stat", "read the link") failed on `shown`.
    Io {
        /// The step, as walked.
        shown: PathBuf,
        /// What was done.
        what: &'static str,
        /// What the kernel said.
        error: io::Error,
    },
    /// More than [`MAX_LINKS`] links.
    TooManyLinks,
    /// A step before the last is neither a directory nor a link.
    NotADirectory {
        /// The step, as walked.
        shown: PathBuf,
    },
}

impl WalkFailure {
    /// The error number a path lookup would have failed with.
    pub fn into_io(self) -> io::Error {
        match self {
            WalkFailure::CurrentDir(error) | WalkFailure::Io { error, .. } => error,
            WalkFailure::TooManyLinks => io::Error::from_raw_os_error(libc::ELOOP),
            WalkFailure::NotADirectory { .. } => io::Error::from_raw_os_error(libc::ENOTDIR),
        }
    }
}

/// The caller's judgement of every step.
pub trait Visitor {
    /// What a refusal or failure becomes.
    type Error;
    /// A directory on the way, `/` first; refusing it ends the walk.
    fn directory(&mut self, step: Step<'_>) -> Result<(), Self::Error>;
    /// A symbolic link on the way, before its target is walked.
    fn link(&mut self, step: Step<'_>) -> Result<(), Self::Error>;
    /// `name` could not be opened in `parent`: an error, or a descriptor of what is
    /// there now (the proxy makes a missing directory and goes on).
    fn cannot_open(&mut self, parent: &WalkedDir, name: &OsStr, shown: &Path, error: io::Error) -> Result<OwnedFd, Self::Error>;
    /// Any other failure.
    fn failed(&mut self, failure: WalkFailure) -> Self::Error;
}

/// What the last component of the path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A directory: every component is one (or a link to one).
    Directory,
    /// A file in a directory (a socket): the last component is not opened as a directory
    /// but handed back with its directory.
    Entry,
}

/// Where the walk ended.
#[derive(Debug)]
pub struct Walked {
    /// The last directory reached: the path's own with [`Target::Directory`], the one
    /// the entry is in with [`Target::Entry`].
    pub dir: WalkedDir,
    /// With [`Target::Entry`]: the last component (its path as walked, what `fstat`
    /// said), `None` when the path ended in `/` or `..`.
    pub entry: Option<(PathBuf, StepStat)>,
}

/// Opens `name` in `dir` (`None`: relative to the current directory) with
/// `O_PATH|O_NOFOLLOW`: a link is opened itself, and nothing reaches the file's contents.
pub fn open_step(dir: Option<BorrowedFd<'_>>, name: &OsStr) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: openat(2) with a valid C string; O_PATH|O_NOFOLLOW opens a link itself and
    // never reaches the file's contents.
    let fd = unsafe { libc::openat(at, c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat(2)` of an open descriptor.
pub fn stat_of(fd: BorrowedFd<'_>) -> io::Result<StepStat> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) of a descriptor we borrow, into a buffer we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(StepStat::from_stat(&st))
}

/// The target of the symbolic link opened (`O_PATH|O_NOFOLLOW`) as `link`.
pub fn read_link(link: BorrowedFd<'_>) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat(2) with an empty path reads the link opened as `link` (O_PATH)
    // into a buffer of the given length; it does not NUL-terminate.
    let n = unsafe { libc::readlinkat(link.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// Pushes the components of `path` to the front of `pending`, in order (`..` kept as a
/// step, `.` and `/` dropped).
fn push_components(pending: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components().rev() {
        match c {
            Component::Normal(n) => pending.push_front(n.to_owned()),
            Component::ParentDir => pending.push_front("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Walks `path` (a relative one from the current directory) from `/`, showing every
/// directory and link to `visitor` (see the module's text).
pub fn walk<V: Visitor>(path: &Path, target: Target, visitor: &mut V) -> Result<Walked, V::Error> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| visitor.failed(WalkFailure::CurrentDir(e)))?.join(path)
    };
    let root_shown = PathBuf::from("/");
    let io_failure = |shown: &Path, what, error| WalkFailure::Io { shown: shown.to_path_buf(), what, error };
    let root_fd = open_step(None, OsStr::new("/")).map_err(|e| visitor.failed(io_failure(&root_shown, "open", e)))?;
    let root_stat = stat_of(root_fd.as_fd()).map_err(|e| visitor.failed(io_failure(&root_shown, "stat", e)))?;
    visitor.directory(Step { shown: &root_shown, stat: &root_stat, parent: None })?;
    let mut stack = vec![WalkedDir { fd: root_fd, shown: root_shown, stat: root_stat }];
    let mut pending = VecDeque::new();
    push_components(&mut pending, &absolute);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let top = stack.last().expect("the root stays on the stack");
        let shown = top.shown.join(&name);
        let fd = match open_step(Some(top.fd.as_fd()), &name) {
            Ok(fd) => fd,
            Err(e) => visitor.cannot_open(top, &name, &shown, e)?,
        };
        let stat = stat_of(fd.as_fd()).map_err(|e| visitor.failed(io_failure(&shown, "stat", e)))?;
        if stat.is_symlink() {
            visitor.link(Step { shown: &shown, stat: &stat, parent: Some(top) })?;
            links += 1;
            if links > MAX_LINKS {
                return Err(visitor.failed(WalkFailure::TooManyLinks));
            }
            let link_target = read_link(fd.as_fd()).map_err(|e| visitor.failed(io_failure(&shown, "read the link", e)))?;
            if link_target.is_absolute() {
                stack.truncate(1);
            }
            push_components(&mut pending, &link_target);
            continue;
        }
        if target == Target::Entry && pending.is_empty() {
            let dir = stack.pop().expect("the root stays on the stack");
            return Ok(Walked { dir, entry: Some((shown, stat)) });
        }
        if !stat.is_dir() {
            return Err(visitor.failed(WalkFailure::NotADirectory { shown }));
        }
        visitor.directory(Step { shown: &shown, stat: &stat, parent: Some(top) })?;
        stack.push(WalkedDir { fd, shown, stat });
    }
    // The root never leaves the stack: `..` stops at it and a link truncates to it.
    let dir = stack.pop().expect("the root stays on the stack");
    Ok(Walked { dir, entry: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Records what it is shown; refuses nothing.
    #[derive(Default)]
    struct Recorder {
        dirs: Vec<PathBuf>,
        links: Vec<PathBuf>,
    }

    impl Visitor for Recorder {
        type Error = io::Error;
        fn directory(&mut self, step: Step<'_>) -> io::Result<()> {
            self.dirs.push(step.shown.to_path_buf());
            Ok(())
        }
        fn link(&mut self, step: Step<'_>) -> io::Result<()> {
            self.links.push(step.shown.to_path_buf());
            Ok(())
        }
        fn cannot_open(&mut self, _: &WalkedDir, _: &OsStr, _: &Path, error: io::Error) -> io::Result<OwnedFd> {
            Err(error)
        }
        fn failed(&mut self, failure: WalkFailure) -> io::Error {
            failure.into_io()
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pathwalk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        dir
    }

    #[test]
    fn every_directory_and_link_is_shown_and_links_are_walked_not_followed() {
        let dir = scratch("links");
        std::fs::write(dir.join("a/b/f"), b"").unwrap();
        symlink("a/b", dir.join("rel")).unwrap();
        symlink(dir.join("a"), dir.join("abs")).unwrap();
        let mut seen = Recorder::default();
        let walked = walk(&dir.join("rel/f"), Target::Entry, &mut seen).unwrap();
        let (shown, stat) = walked.entry.unwrap();
        assert_eq!(shown, dir.join("a/b/f"));
        assert!(!stat.is_dir() && !stat.is_symlink());
        assert_eq!(walked.dir.shown, dir.join("a/b"));
        assert_eq!(seen.links, vec![dir.join("rel")]);
        assert!(seen.dirs.contains(&dir.join("a/b")) && seen.dirs[0] == Path::new("/"), "{:?}", seen.dirs);
        // An absolute link starts again from `/`; `..` goes back along the walked path.
        let mut seen = Recorder::default();
        let walked = walk(&dir.join("abs/b/../b"), Target::Directory, &mut seen).unwrap();
        assert_eq!(walked.dir.shown, dir.join("a/b"));
        assert!(walked.entry.is_none());
        assert_eq!(seen.links, vec![dir.join("abs")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn link_loops_files_on_the_way_and_missing_steps_fail_as_a_lookup_would() {
        let dir = scratch("fail");
        symlink("loop", dir.join("loop")).unwrap();
        std::fs::write(dir.join("file"), b"").unwrap();
        let errno = |p: &Path, t| walk(p, t, &mut Recorder::default()).map(|_| ()).unwrap_err().raw_os_error();
        assert_eq!(errno(&dir.join("loop/x"), Target::Entry), Some(libc::ELOOP));
        assert_eq!(errno(&dir.join("file/x"), Target::Entry), Some(libc::ENOTDIR));
        assert_eq!(errno(&dir.join("file"), Target::Directory), Some(libc::ENOTDIR));
        assert_eq!(errno(&dir.join("none/x"), Target::Entry), Some(libc::ENOENT));
        // A path ending in `..` names no entry.
        assert!(walk(&dir.join("a/.."), Target::Entry, &mut Recorder::default()).unwrap().entry.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refusal_ends_the_walk_at_that_step() {
        struct NoTmp;
        impl Visitor for NoTmp {
            type Error = String;
            fn directory(&mut self, step: Step<'_>) -> Result<(), String> {
                if step.stat.mode & STICKY != 0 {
                    return Err(format!("{} is sticky", step.shown.display()));
                }
                Ok(())
            }
            fn link(&mut self, _: Step<'_>) -> Result<(), String> {
                Ok(())
            }
            fn cannot_open(&mut self, _: &WalkedDir, _: &OsStr, shown: &Path, e: io::Error) -> Result<OwnedFd, String> {
                Err(format!("{}: {e}", shown.display()))
            }
            fn failed(&mut self, failure: WalkFailure) -> String {
                format!("{failure:?}")
            }
        }
        let tmp = std::env::temp_dir();
        let sticky = stat_of(open_step(None, tmp.as_os_str()).unwrap().as_fd()).unwrap().mode & STICKY != 0;
        let dir = scratch("refuse");
        let result = walk(&dir.join("a"), Target::Directory, &mut NoTmp);
        if sticky {
            assert!(result.unwrap_err().ends_with("is sticky"));
        } else {
            assert!(result.is_ok());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
