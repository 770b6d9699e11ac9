//! Who may reach a socket: the owner, group and mode of the socket file and of the
//! directory the proxy makes for it, and an optional allowlist of peer uids and gids
//! checked with `SO_PEERCRED` (and `SO_PEERGROUPS`) on every connection. How those are
//! applied without following links, and which directories are refused: `sockpath.rs`.

use std::os::fd::BorrowedFd;

use crate::cmds::SocketAccess;
use crate::os;

/// The resolved access settings of one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Owner of the socket file (None: the proxy's). A directory the proxy makes is
    /// always the proxy's own: its owner could replace the socket.
    pub owner: Option<u32>,
    /// Group of the socket file and of a directory the proxy makes (None: the proxy's).
    pub group: Option<u32>,
    /// Permissions of the socket file.
    pub mode: u32,
    /// Peers allowed to connect by uid or by gid (primary or supplementary). Both empty:
    /// whoever the file permissions let in.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
}

impl Access {
    /// The mode of a directory the proxy makes for this socket: everything for the proxy,
    /// and only search (`x`, never `w` or `r`) for the group and others where the socket
    /// gives them access, and for others when the socket belongs to another user (who is
    /// not the directory's owner). Nobody but the proxy can add, remove or rename an
    /// entry in it, so no guest can replace the socket.
    pub fn dir_mode(&self, proxy_uid: u32) -> u32 {
        let group = if self.mode & 0o060 != 0 { 0o010 } else { 0 };
        let foreign_owner = self.owner.is_some_and(|u| u != proxy_uid);
        let others = if self.mode & 0o006 != 0 || foreign_owner { 0o001 } else { 0 };
        0o700 | group | others
    }

    /// These settings with a `socket` line's overrides applied.
    pub fn with(&self, o: &SocketAccess) -> Result<Access, String> {
        let mut a = self.clone();
        if let Some(u) = &o.owner {
            a.owner = Some(resolve_user(u)?);
        }
        if let Some(g) = &o.group {
            a.group = Some(resolve_group(g)?);
        }
        if let Some(m) = o.mode {
            a.mode = m;
        }
        if let Some(list) = &o.allow_uid {
            a.allow_uids = list.iter().map(|u| resolve_user(u)).collect::<Result<_, _>>()?;
        }
        if let Some(list) = &o.allow_gid {
            a.allow_gids = list.iter().map(|g| resolve_group(g)).collect::<Result<_, _>>()?;
        }
        Ok(a)
    }

    pub fn has_allowlist(&self) -> bool {
        !self.allow_uids.is_empty() || !self.allow_gids.is_empty()
    }

    /// Whether a peer with these credentials may connect.
    pub fn admits(&self, peer: &PeerCred) -> bool {
        if !self.has_allowlist() {
            return true;
        }
        self.allow_uids.contains(&peer.uid)
            || self.allow_gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.allow_gids.contains(g))
    }

    /// `owner=.. group=.. mode=.. allow=..` for `show sockets`.
    pub fn describe(&self) -> String {
        let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        let list = |v: &[u32]| if v.is_empty() { "-".to_string() } else { v.iter().map(u32::to_string).collect::<Vec<_>>().join(",") };
        format!(
            "owner={} group={} mode={:04o} allow_uid={} allow_gid={}",
            id(self.owner),
            id(self.group),
            self.mode,
            list(&self.allow_uids),
            list(&self.allow_gids)
        )
    }
}

/// A connected peer as the kernel saw it when it connected.
pub type PeerCred = os::Credentials;

/// `SO_PEERCRED` and `SO_PEERGROUPS` of a connected unix socket.
pub fn peer_cred(fd: BorrowedFd<'_>) -> Option<PeerCred> {
    os::peer_credentials(fd)
}

/// A user name or a numeric uid.
pub fn resolve_user(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    os::user_id(s).ok_or_else(|| format!("no user '{s}'"))
}

/// A group name or a numeric gid.
pub fn resolve_group(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    os::group_id(s).ok_or_else(|| format!("no group '{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Access {
        Access { owner: None, group: None, mode: 0o660, allow_uids: vec![], allow_gids: vec![] }
    }

    #[test]
    fn made_directories_give_search_only_never_write() {
        let with = |mode, owner| Access { mode, owner, ..base() }.dir_mode(0);
        assert_eq!(with(0o660, None), 0o710);
        assert_eq!(with(0o600, None), 0o700);
        assert_eq!(with(0o666, None), 0o711);
        assert_eq!(with(0o640, None), 0o710);
        assert_eq!(with(0o600, Some(0)), 0o700, "the proxy's own uid");
        assert_eq!(with(0o600, Some(1000)), 0o701, "another owner needs search permission");
        for mode in 0..=0o777 {
            for owner in [None, Some(0), Some(1000)] {
                assert_eq!(with(mode, owner) & 0o066, 0, "mode {mode:04o}: no read or write for group or others");
            }
        }
    }

    #[test]
    fn the_allowlist_checks_uid_primary_and_supplementary_groups() {
        let peer = |uid, gid, groups: &[u32]| PeerCred { pid: 1, uid, gid, groups: groups.to_vec() };
        assert!(base().admits(&peer(1234, 1234, &[])), "no allowlist: the file mode decides");
        let a = Access { allow_uids: vec![1000], allow_gids: vec![50], ..base() };
        assert!(a.admits(&peer(1000, 1000, &[])));
        assert!(a.admits(&peer(1001, 50, &[])));
        assert!(a.admits(&peer(1001, 1001, &[7, 50])));
        assert!(!a.admits(&peer(1001, 1001, &[7])));
        assert!(!a.admits(&peer(0, 0, &[])), "root is not special");
    }

    #[test]
    fn socket_lines_override_the_options() {
        let o = SocketAccess { owner: Some("0".into()), mode: Some(0o600), allow_uid: Some(vec!["root".into(), "7".into()]), ..Default::default() };
        let a = base().with(&o).unwrap();
        assert_eq!((a.owner, a.group, a.mode, a.dir_mode(0)), (Some(0), None, 0o600, 0o700));
        assert_eq!(a.allow_uids, vec![0, 7]);
        let bad = SocketAccess { group: Some("no-such-group-here".into()), ..Default::default() };
        assert_eq!(base().with(&bad).unwrap_err(), "no group 'no-such-group-here'");
        assert_eq!(resolve_user("no-such-user-here").unwrap_err(), "no user 'no-such-user-here'");
    }
}
