//! The socket files the proxy serves, and every path operation it does for them as root.
//!
//! A local user who can change a directory on a socket's path can replace the socket
//! with their own and receive the next guest's region (a guest reconnects by itself), or
//! swap in a symbolic link so that root changes the owner and mode of another file. So:
//!
//! * The socket's directory is opened by walking its path one component at a time from
//!   `/` (`openat` with `O_NOFOLLOW`, [`walk`]: the contract's `pathwalk`, which the
//!   guests' check of a server's path uses too). Every directory and symbolic link on
//!   the way must belong to root or to the proxy's user (the one it runs as after
//!   start-up, `--user`, or its own), and no directory may be
//!   writable by its group or others unless it is sticky (then nobody else can remove or
//!   rename what root owns in it). Anything else is refused with the reason: whoever
//!   could change that step could replace the socket.
//! * Missing directories are made with `mkdirat` and get their group and mode through a
//!   descriptor of the directory just made (`fchown`/`fchmod`), never through a path. They
//!   belong to the proxy's user (so that it can still remove the socket after dropping
//!   root), with search-only bits for the socket's group and others
//!   ([`Access::dir_mode`]): nobody else can write them.
//! * The socket is bound, put in listening state and given its owner, group and mode
//!   inside a private 0700 directory the proxy makes next to it (bound through
//!   `/proc/self/fd/<dir>/`, which is that very directory whatever its path is), then
//!   moved into place with `renameat2(RENAME_NOREPLACE)`: it appears complete, and the
//!   calls that change owner and mode act where nobody else can put a link.
//! * In a sticky directory that others can write, the socket must stay the proxy's (an
//!   `owner` of another user could delete and replace it).
//! * A stale socket (nobody listening) is removed only if it is still a socket when the
//!   new one is ready; on removal the proxy unlinks the socket only if it is still the
//!   file it made (same device and inode), and the directories it made only if they are
//!   still those and empty, all relative to directory descriptors held since.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::access::Access;
use crate::os::{self, FileStat};
use shm_contract::pathwalk::{self, Step, Target, Visitor, WalkFailure, WalkedDir};
/// Name of the socket inside the private directory it is made in.
const PRIVATE_NAME: &str = "sock";
/// Listen backlog of a guest socket (one guest at a time; more are refused on sight).
const BACKLOG: i32 = 8;

/// The kind of a socket file: a guest socket (seqpacket, the protocol's transport) or
/// the admin socket (a stream of command lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    Seqpacket,
    Stream { backlog: i32 },
}

impl SocketKind {
    fn socket(self, nonblocking: bool) -> io::Result<OwnedFd> {
        match self {
            SocketKind::Seqpacket => os::seqpacket_socket(nonblocking),
            SocketKind::Stream { .. } => os::stream_socket(nonblocking),
        }
    }

    fn backlog(self) -> i32 {
        match self {
            SocketKind::Seqpacket => BACKLOG,
            SocketKind::Stream { backlog } => backlog,
        }
    }
}

/// Who the proxy is: root (or whoever started it) now, and the user it runs as once
/// started (`--user`), which must still be able to remove what it made.
#[derive(Clone, Copy, Debug)]
pub struct ProxyUser {
    /// The uid the proxy runs as after start-up (its own uid when it does not drop).
    pub runs_as: u32,
}

impl ProxyUser {
    /// Whether `uid` may own a step of a socket's path: root, the proxy's current uid, or
    /// the user it runs as.
    fn trusts(&self, uid: u32) -> bool {
        uid == 0 || uid == os::effective_uid() || uid == self.runs_as
    }
}

/// Refuses a directory that someone other than root or the proxy could change.
fn check_dir(who: ProxyUser, shown: &Path, st: &FileStat) -> Result<(), String> {
    if !who.trusts(st.uid) {
        return Err(format!(
            "{} belongs to uid {}: every directory on a socket's path must belong to root or to the proxy's user \
             (its owner could replace the socket)",
            shown.display(),
            st.uid
        ));
    }
    if st.open_to_others() {
        return Err(format!(
            "{} is writable by its group or others (mode {:04o}) and not sticky: whoever can write it could replace \
             the socket; use a directory only the proxy can write (or a sticky one)",
            shown.display(),
            st.mode & 0o7777
        ));
    }
    Ok(())
}

/// An open directory on a checked path (its path as walked, for messages).
type Dir = WalkedDir;

/// A directory the proxy made: removed again (when still it, and empty) with its socket.
struct MadeDir {
    parent: OwnedFd,
    name: OsString,
    stat: FileStat,
}

/// Owner, group and mode of a directory the proxy makes.
#[derive(Clone, Copy)]
struct DirSpec {
    /// The user the proxy runs as: it must still be able to remove the socket.
    owner: u32,
    group: Option<u32>,
    mode: u32,
}

/// The proxy's judgement of each step of a socket's directory path ([`walk`]).
struct ServedPathSteps<'a> {
    who: ProxyUser,
    /// The path asked for (for messages).
    path: &'a Path,
    make: Option<DirSpec>,
    made: &'a mut Vec<MadeDir>,
}

impl Visitor for ServedPathSteps<'_> {
    type Error = String;

    fn directory(&mut self, step: Step<'_>) -> Result<(), String> {
        check_dir(self.who, step.shown, step.stat)
    }

    fn link(&mut self, step: Step<'_>) -> Result<(), String> {
        if !self.who.trusts(step.stat.uid) {
            return Err(format!(
                "{} is a symbolic link that belongs to uid {}: links on a socket's path must belong to root or to \
                 the proxy's user",
                step.shown.display(),
                step.stat.uid
            ));
        }
        Ok(())
    }

    fn cannot_open(&mut self, parent: &Dir, name: &OsStr, shown: &Path, e: io::Error) -> Result<OwnedFd, String> {
        match self.make {
            Some(spec) if e.kind() == io::ErrorKind::NotFound => make_dir(parent, name, shown, spec, self.made),
            None if e.kind() == io::ErrorKind::NotFound => Err(format!("{} does not exist", shown.display())),
            _ => Err(format!("cannot open {}: {e}", shown.display())),
        }
    }

    fn failed(&mut self, failure: WalkFailure) -> String {
        match failure {
            WalkFailure::CurrentDir(e) => format!("cannot find the current directory: {e}"),
            WalkFailure::Io { shown, what, error } => format!("cannot {what} {}: {error}", shown.display()),
            WalkFailure::TooManyLinks => format!("too many symbolic links on the way to {}", self.path.display()),
            WalkFailure::NotADirectory { shown } => format!("{} is not a directory", shown.display()),
        }
    }
}

/// Opens directory `path`, checking every step from `/` (the contract's one path walk,
/// [`pathwalk::walk`]: every directory by [`check_dir`]; symbolic links are followed
/// only when root or the proxy's user owns them). With `make`, missing directories are
/// made (recorded in `made`, first the topmost).
fn walk(who: ProxyUser, path: &Path, make: Option<DirSpec>, made: &mut Vec<MadeDir>) -> Result<Dir, String> {
    let mut steps = ServedPathSteps { who, path, make, made };
    Ok(pathwalk::walk(path, Target::Directory, &mut steps)?.dir)
}

/// Makes directory `name` in `parent` and gives it `spec`'s group and mode through its
/// descriptor. One that someone made meanwhile is opened (and then checked) like any
/// existing one.
fn make_dir(parent: &Dir, name: &OsStr, shown: &Path, spec: DirSpec, made: &mut Vec<MadeDir>) -> Result<OwnedFd, String> {
    match os::mkdir_at(parent.fd.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return os::open_path_at(Some(parent.fd.as_fd()), name).map_err(|e| format!("cannot open {}: {e}", shown.display()));
        }
        Err(e) => return Err(format!("cannot create {}: {e}", shown.display())),
    }
    let fd = os::open_dir_at(parent.fd.as_fd(), name).map_err(|e| format!("cannot open {}: {e}", shown.display()))?;
    let stat = os::fstat(fd.as_fd()).map_err(|e| format!("cannot stat {}: {e}", shown.display()))?;
    let parent_fd = parent.fd.try_clone().map_err(|e| format!("cannot keep {} open: {e}", parent.shown.display()))?;
    made.push(MadeDir { parent: parent_fd, name: name.to_owned(), stat });
    if !stat.is_dir() || stat.uid != os::effective_uid() {
        return Err(format!("{} was replaced while it was being made", shown.display()));
    }
    let owner = Some(spec.owner).filter(|&u| u != stat.uid);
    os::fchown_fchmod(fd.as_fd(), owner, spec.group, spec.mode).map_err(|e| {
        format!("cannot give {} owner {} group {:?} mode {:04o}: {e}", shown.display(), spec.owner, spec.group, spec.mode)
    })?;
    Ok(fd)
}

/// Removes the directories in `made` (the deepest first) while each is still the one made
/// and empty.
fn remove_made(made: &[MadeDir]) {
    for d in made.iter().rev() {
        let same = os::stat_at(d.parent.as_fd(), &d.name).is_ok_and(|st| st.same_file(&d.stat));
        if !same || os::unlink_at(d.parent.as_fd(), &d.name, true).is_err() {
            break;
        }
    }
}

/// A socket file the proxy made and serves: its directory held open, its name, and which
/// file it is, so that removing it never removes anything else.
pub struct SocketFile {
    dir: OwnedFd,
    name: OsString,
    file: FileStat,
    made: Vec<MadeDir>,
}

impl SocketFile {
    /// Makes the listening socket at `path` with the owner, group and mode of `access`,
    /// making its missing directories (see the module's text for every check). A stale
    /// socket (nobody listening) is replaced; a live one is an error. On any error
    /// nothing is left behind: neither a socket file nor a directory made here.
    pub fn create(path: &Path, access: &Access, who: ProxyUser) -> Result<(SocketFile, OwnedFd), String> {
        SocketFile::create_kind(path, access, who, SocketKind::Seqpacket)
    }

    /// [`SocketFile::create`] for a socket of `kind`.
    pub fn create_kind(path: &Path, access: &Access, who: ProxyUser, kind: SocketKind) -> Result<(SocketFile, OwnedFd), String> {
        let name = match path.components().next_back() {
            Some(Component::Normal(n)) => n.to_owned(),
            _ => return Err(format!("{} names no socket file", path.display())),
        };
        // Guests connect by this path: it must fit a unix socket address.
        os::UnixAddr::new(path)?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        // The admin socket's directories are search-only for everyone (0711), as the
        // default one (/run/dpdk-io-proxy) is where guest sockets go too; the admin
        // socket's own mode keeps others out of it.
        let mode = match kind {
            SocketKind::Seqpacket => access.dir_mode(who.runs_as),
            SocketKind::Stream { .. } => access.dir_mode(who.runs_as) | 0o011,
        };
        let spec = DirSpec { owner: who.runs_as, group: access.group, mode };
        let mut made = Vec::new();
        let result = walk(who, parent, Some(spec), &mut made).and_then(|dir| {
            let (file, listener) = bind_in(who, &dir, &name, path, access, kind)?;
            Ok((dir.fd, file, listener))
        });
        match result {
            Ok((dir, file, listener)) => Ok((SocketFile { dir, name, file, made }, listener)),
            Err(e) => {
                remove_made(&made);
                Err(e)
            }
        }
    }

    /// Removes the socket file if it is still the one made here, then the directories
    /// made for it, deepest first, as long as they are empty.
    pub fn remove(&self) {
        if os::stat_at(self.dir.as_fd(), &self.name).is_ok_and(|st| st.same_file(&self.file)) {
            let _ = os::unlink_at(self.dir.as_fd(), &self.name, false);
        }
        remove_made(&self.made);
    }
}

/// Whether the unix socket `name` (of `kind`) in `dir` has a listener. The file is opened
/// first (`O_PATH|O_NOFOLLOW`) and must be a socket; the probe then connects through
/// that descriptor (`/proc/self/fd/<n>`), never by name: a symbolic link swapped in for
/// a stale socket (in a sticky directory its owner may do that) is not followed, so
/// root never connects to a listener someone else chose.
fn has_listener_at(dir: &OwnedFd, name: &OsStr, kind: SocketKind) -> bool {
    let Ok(file) = os::open_path_at(Some(dir.as_fd()), name) else { return false };
    if !os::fstat(file.as_fd()).is_ok_and(|st| st.is_socket()) {
        return false;
    }
    let Ok(addr) = os::UnixAddr::new(&os::fd_path(file.as_fd())) else { return false };
    // A probe connect on a fresh non-blocking socket that is closed right after: a
    // listener whose backlog is full still exists.
    let Ok(fd) = kind.socket(true) else { return false };
    match os::connect(fd.as_fd(), &addr) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Makes the listening socket `name` in `dir` (checked by [`walk`]): bound, listening and
/// given its owner, group and mode in a private directory, then moved into place.
fn bind_in(
    who: ProxyUser,
    dir: &Dir,
    name: &OsStr,
    path: &Path,
    access: &Access,
    kind: SocketKind,
) -> Result<(FileStat, OwnedFd), String> {
    let shown = path.display();
    if dir.stat.writable_by_others() {
        if let Some(owner) = access.owner.filter(|&u| !who.trusts(u)) {
            return Err(format!(
                "{} is writable by others (sticky, mode {:04o}): a socket there must stay the proxy's, not belong to \
                 uid {owner}, who could delete and replace it; use another directory or no socket owner",
                dir.shown.display(),
                dir.stat.mode & 0o7777
            ));
        }
    }
    let stale = match os::stat_at(dir.fd.as_fd(), name) {
        Ok(st) if !st.is_socket() => return Err(format!("{shown} exists and is not a socket")),
        Ok(_) if has_listener_at(&dir.fd, name, kind) => return Err(format!("{shown} is served by another process")),
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(format!("cannot look at {shown}: {e}")),
    };
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    let mut private = OsString::from(".");
    private.push(name);
    private.push(format!(".dpdk-io-proxy.{}.{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed)));
    os::mkdir_at(dir.fd.as_fd(), &private, 0o700)
        .map_err(|e| format!("cannot make a private directory in {}: {e}", dir.shown.display()))?;
    let made = os::open_dir_at(dir.fd.as_fd(), &private)
        .map_err(|e| format!("cannot open the private directory in {}: {e}", dir.shown.display()))
        .and_then(|private_dir| {
            let result = bind_privately(dir, &private_dir, name, stale, path, access, kind);
            let _ = os::unlink_at(private_dir.as_fd(), OsStr::new(PRIVATE_NAME), false);
            result
        });
    let _ = os::unlink_at(dir.fd.as_fd(), &private, true);
    made
}

fn bind_privately(
    dir: &Dir,
    private_dir: &OwnedFd,
    name: &OsStr,
    stale: bool,
    path: &Path,
    access: &Access,
    kind: SocketKind,
) -> Result<(FileStat, OwnedFd), String> {
    let shown = path.display();
    let st = os::fstat(private_dir.as_fd()).map_err(|e| format!("private directory: {e}"))?;
    if st.uid != os::effective_uid() || st.mode & 0o077 != 0 {
        return Err(format!("the private directory in {} is not the proxy's alone", dir.shown.display()));
    }
    let inner = OsStr::new(PRIVATE_NAME);
    let listener = kind.socket(true).map_err(|e| format!("socket: {e}"))?;
    let addr = os::UnixAddr::new(&os::path_in_fd(private_dir.as_fd(), inner))?;
    os::bind(listener.as_fd(), &addr).map_err(|e| format!("cannot bind {shown}: {e}"))?;
    // Connections start refusing descriptors (a guest's sendmsg with any fails, nothing is
    // queued): only a reattaching guest gets to pass one, when asked (control/session.rs).
    // A kernel before 6.16 has no such switch; the reaper then takes what comes.
    let _ = os::set_pass_rights(listener.as_fd(), false);
    os::listen(listener.as_fd(), kind.backlog()).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    os::chown_chmod_at(private_dir.as_fd(), inner, access.owner, access.group, access.mode).map_err(|e| {
        format!("cannot give {shown} owner {:?} group {:?} mode {:04o}: {e}", access.owner, access.group, access.mode)
    })?;
    let file = os::stat_at(private_dir.as_fd(), inner).map_err(|e| format!("cannot stat {shown}: {e}"))?;
    if stale {
        // Removed only if it is still a socket (nobody else could have put anything
        // else there but root: the directory passed `check_dir`).
        match os::stat_at(dir.fd.as_fd(), name) {
            Ok(st) if st.is_socket() => {
                os::unlink_at(dir.fd.as_fd(), name, false).map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?
            }
            Ok(_) => return Err(format!("{shown} was replaced by something that is not a socket")),
            Err(_) => {}
        }
    }
    os::rename_noreplace(private_dir.as_fd(), inner, dir.fd.as_fd(), name).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            format!("{shown} was made by another process meanwhile")
        } else {
            format!("cannot move the socket into place at {shown}: {e}")
        }
    })?;
    Ok((file, listener))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    /// A uid and gid that are not the test's (the tests run as root: `nobody`).
    const OTHER: u32 = 65534;

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!("iop-sockpath-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            Tmp(dir)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Makes a socket as a proxy that does not change its user.
    fn create(path: &Path, access: Access) -> Result<(SocketFile, OwnedFd), String> {
        SocketFile::create(path, &access, ProxyUser { runs_as: os::effective_uid() })
    }

    fn access(mode: u32, owner: Option<u32>, group: Option<u32>) -> Access {
        Access { owner, group, mode, allow_uids: vec![], allow_gids: vec![] }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn is_root() -> bool {
        os::effective_uid() == 0
    }

    /// [`has_listener_at`] for a path.
    fn has_listener(path: &Path) -> bool {
        let dir = os::open_path_at(None, path.parent().unwrap().as_os_str()).unwrap();
        has_listener_at(&dir, path.file_name().unwrap(), SocketKind::Seqpacket)
    }

    /// The sockets the proxy serves take no descriptors (`SO_PASSRIGHTS` off, inherited
    /// by each connection, even one made before the proxy accepts it): a peer's send with
    /// one fails (`EPERM`), nothing is queued, and such a connection is closed on the
    /// spot. Let through for one message, it is closed by the reaper from then on.
    #[test]
    fn served_sockets_refuse_descriptors_until_one_is_asked_for() {
        use shm_contract::proto::transport::{recv_message_and_fds, send_message};
        let t = Tmp::new("passrights");
        let path = t.0.join("sock");
        let (f, listener) = create(&path, access(0o600, None, None)).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).err();
        assert!(client.is_some(), "a seqpacket socket: a stream connect fails");
        let fd = os::seqpacket_socket(false).unwrap();
        os::connect(fd.as_fd(), &os::UnixAddr::new(&path).unwrap()).unwrap();
        let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
        let pass = |what: &str| send_message(fd.as_fd(), &shm_contract::Message::Goodbye, 1, &[pipe_r.as_fd()]).map_err(|e| format!("{what}: {e}"));
        // Before the proxy accepted: refused by the kernel.
        let err = pass("before accept").unwrap_err();
        assert!(err.contains("os error 1)"), "{err}");
        let conn = crate::reaper::PeerFd::connection(os::accept(listener.as_fd()).unwrap(), 1000);
        assert!(!conn.passes());
        assert!(pass("after accept").unwrap_err().contains("os error 1)"));
        let mut conn = conn;
        conn.let_pass().unwrap();
        assert!(conn.passes());
        pass("asked for").unwrap();
        let got = recv_message_and_fds(conn.as_fd(), Some(std::time::Duration::from_secs(5)));
        assert_eq!(got.fds.len(), 1);
        conn.stop_passing().unwrap();
        assert!(pass("after").unwrap_err().contains("os error 1)"));
        assert!(conn.passes(), "closed by the reaper: it let descriptors through once");
        f.remove();
    }

    /// The red-team finding: a stale socket's owner swaps in a link to a live listener
    /// of their choice between the proxy's look at the name and its probe. The probe goes
    /// through the file it looked at (never the name): a link is no socket, nothing
    /// connects to the listener it points at, and the proxy serves its socket there.
    #[test]
    fn the_stale_socket_probe_never_follows_a_link() {
        let t = Tmp::new("probe");
        let elsewhere = t.0.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let chosen = elsewhere.join("chosen");
        let listener = std::os::unix::net::UnixListener::bind(&chosen).unwrap();
        listener.set_nonblocking(true).unwrap();
        let swapped = t.0.join("sock");
        std::os::unix::fs::symlink(&chosen, &swapped).unwrap();
        assert!(!has_listener(&swapped), "a link is not a socket");
        assert!(matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock), "nothing connected to it");
        // The socket itself: probed through its descriptor.
        drop(listener);
        let (f, _l) = create(&t.0.join("real"), access(0o600, None, None)).unwrap();
        assert!(has_listener(&t.0.join("real")));
        f.remove();
    }

    #[test]
    fn made_directories_are_the_proxys_with_search_only_bits_and_go_away_with_the_socket() {
        let t = Tmp::new("made");
        let path = t.0.join("a/b/sock");
        let group = if is_root() { Some(OTHER) } else { None };
        let (file, listener) = create(&path, access(0o660, None, group)).unwrap();
        for d in [t.0.join("a"), t.0.join("a/b")] {
            let meta = std::fs::metadata(&d).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o710, "{}", d.display());
            assert_eq!(meta.uid(), os::effective_uid());
            if let Some(g) = group {
                assert_eq!(meta.gid(), g);
            }
        }
        assert_eq!(mode(&path), 0o660);
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket_file());
        // Listening: a client connects by the public path.
        assert!(has_listener(&path));
        // Nothing else was left in the directory (the private one is gone).
        let names: Vec<_> = std::fs::read_dir(t.0.join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("sock")]);
        file.remove();
        drop(listener);
        assert!(!t.0.join("a").exists(), "socket and made directories removed");
    }

    trait SocketType {
        fn is_socket_file(&self) -> bool;
    }
    impl SocketType for std::fs::FileType {
        fn is_socket_file(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_socket(self)
        }
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_or_a_file_refused() {
        let t = Tmp::new("stale");
        let path = t.0.join("sock");
        let (first, l1) = create(&path, access(0o600, None, None)).unwrap();
        let err = create(&path, access(0o600, None, None)).err().unwrap();
        assert!(err.ends_with("is served by another process"), "{err}");
        // The proxy died without removing it: stale.
        drop(l1);
        let (second, _l2) = create(&path, access(0o600, None, None)).unwrap();
        // The first one's removal leaves the new file alone: it is another file now.
        first.remove();
        assert!(path.exists());
        assert!(has_listener(&path));
        second.remove();
        assert!(!path.exists());
        std::fs::write(&path, "data").unwrap();
        let err = create(&path, access(0o600, None, None)).err().unwrap();
        assert!(err.ends_with("exists and is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_symlink_swapped_in_for_the_socket_or_its_directory_never_changes_its_target() {
        let t = Tmp::new("link");
        let victim = t.0.join("victim");
        std::fs::write(&victim, "x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        // The socket's name is a link to another file: refused, the file untouched.
        let sock = t.0.join("sock");
        std::os::unix::fs::symlink(&victim, &sock).unwrap();
        let err = create(&sock, access(0o666, Some(0), Some(OTHER))).err().unwrap();
        assert!(err.ends_with("exists and is not a socket"), "{err}");
        // The directory is a link to a directory holding the victim, planted by another
        // user: refused before anything is made there.
        let victim_dir = t.0.join("victim_dir");
        std::fs::create_dir(&victim_dir).unwrap();
        std::fs::set_permissions(&victim_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let planted = t.0.join("planted");
        std::os::unix::fs::symlink(&victim_dir, &planted).unwrap();
        if is_root() {
            std::os::unix::fs::lchown(&planted, Some(OTHER), Some(OTHER)).unwrap();
            let err = create(&planted.join("sock"), access(0o666, None, Some(OTHER))).err().unwrap();
            assert!(err.contains("is a symbolic link that belongs to uid 65534"), "{err}");
            assert!(!victim_dir.join("sock").exists());
        }
        // A link the proxy's user owns is followed; the socket lands in its target and
        // only the socket gets the mode.
        let own = t.0.join("own");
        std::os::unix::fs::symlink("victim_dir", &own).unwrap();
        let (f, _l) = create(&own.join("sock"), access(0o666, None, None)).unwrap();
        assert_eq!(mode(&victim_dir.join("sock")), 0o666);
        assert_eq!(mode(&victim_dir), 0o700, "an existing directory keeps its mode");
        f.remove();
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!((after.mode(), after.uid(), after.gid()), (before.mode(), before.uid(), before.gid()));
    }

    #[test]
    fn directories_others_can_write_are_refused_unless_sticky() {
        let t = Tmp::new("modes");
        let open = t.0.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create(&open.join("sock"), access(0o660, None, None)).err().unwrap();
        assert!(err.contains("is writable by its group or others (mode 0777) and not sticky"), "{err}");
        // Also when it is only a step on the way.
        let err = create(&open.join("sub/sock"), access(0o660, None, None)).err().unwrap();
        assert!(err.contains("(mode 0777) and not sticky"), "{err}");
        assert!(!open.join("sub").exists());
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(create(&open.join("sock"), access(0o660, None, None)).err().unwrap().contains("mode 0770"));
        // Sticky: served, as long as the socket stays the proxy's.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let (f, _l) = create(&open.join("sock"), access(0o660, None, None)).unwrap();
        f.remove();
        if is_root() {
            let err = create(&open.join("sock"), access(0o600, Some(OTHER), None)).err().unwrap();
            assert!(err.contains("must stay the proxy's, not belong to uid 65534"), "{err}");
            // A directory that belongs to another user.
            let theirs = t.0.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
            let err = create(&theirs.join("sock"), access(0o660, None, None)).err().unwrap();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
        assert!(!open.join("sock").exists());
    }

    #[test]
    fn the_user_the_proxy_becomes_owns_what_it_makes_and_may_own_the_path() {
        if !is_root() {
            return;
        }
        let t = Tmp::new("runsas");
        let later = ProxyUser { runs_as: OTHER };
        // A directory of that user (an operator's run-time directory for the proxy).
        let theirs = t.0.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
        let a = access(0o660, Some(OTHER), None);
        let (f, _l) = SocketFile::create(&theirs.join("q/sock"), &a, later).unwrap();
        let made = std::fs::metadata(theirs.join("q")).unwrap();
        assert_eq!((made.uid(), made.mode() & 0o7777), (OTHER, 0o710), "made for the user the proxy becomes");
        assert_eq!(std::fs::metadata(theirs.join("q/sock")).unwrap().uid(), OTHER);
        f.remove();
        assert!(!theirs.join("q").exists());
        // In a sticky directory the socket may belong to that user (it is the proxy).
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let (f, _l) = SocketFile::create(&theirs.join("sock"), &a, later).unwrap();
        f.remove();
        // Without that user, the same directory belongs to a stranger.
        let err = create(&theirs.join("sock"), access(0o660, None, None)).err().unwrap();
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }

    #[test]
    fn relative_paths_and_dot_dot_are_walked_like_the_kernel_does() {
        let t = Tmp::new("rel");
        std::fs::create_dir(t.0.join("x")).unwrap();
        let path = t.0.join("x/../y/./sock");
        let (f, _l) = create(&path, access(0o600, None, None)).unwrap();
        assert!(t.0.join("y/sock").exists());
        f.remove();
        assert!(!t.0.join("y").exists());
        assert!(create(&t.0.join(".."), access(0o600, None, None)).err().unwrap().ends_with("names no socket file"));
    }
}
