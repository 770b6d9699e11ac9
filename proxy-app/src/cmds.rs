//! The proxy's commands: the startup file (`--cmds FILE`, or `./dpdk-io-proxy.cmds`) and
//! the same commands typed on stdin.

use std::path::PathBuf;

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `socket <path> port <p> queue <q> [owner U] [group G] [mode M] [allow-uid L] [allow-gid L]`:
    /// serve NIC queue (p, q) on a unix socket; `queues <q0>,<q1>,...` instead of
    /// `queue <q>` serves several NIC queues of port p to one guest, as its queue pairs
    /// 0, 1, ... in one region. The options override the proxy's `--socket-owner`,
    /// `--socket-group`, `--socket-mode`, `--allow-uid`, `--allow-gid`.
    Socket { path: PathBuf, port: u16, queues: Vec<u16>, access: SocketAccess },
    /// `remove <path>`: stop serving a socket (its guest, if any, is disconnected).
    Remove { path: PathBuf },
    /// `show stats`: per-socket and per-port counters.
    ShowStats,
    /// `show sockets`: sockets, their queues and guests.
    ShowSockets,
    /// `help`.
    Help,
    /// `quit`.
    Quit,
}

/// Per-socket access settings given on a `socket` line (unset: the proxy's options).
/// Users and groups stay names or numbers here; the proxy resolves them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketAccess {
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
    pub allow_uid: Option<Vec<String>>,
    pub allow_gid: Option<Vec<String>>,
}

pub const HELP: &str = "\
commands (startup file and stdin):
  socket <path> port <p> queue <q> [owner U] [group G] [mode OCTAL] [allow-uid U,..] [allow-gid G,..]
                                     serve NIC port p, queue q to one guest on a unix socket
                                     at <path> (its directory is created if missing); the
                                     options override --socket-owner/-group/-mode, --allow-uid/-gid
  socket <path> port <p> queues <q0>,<q1>,.. [options as above]
                                     the same with several NIC queues: the guest's queue
                                     pairs 0, 1, .. (up to 16) are NIC queues q0, q1, ..
  remove <path>                      stop serving <path>; its guest is disconnected
  show stats                         per-socket rx/tx/drops/copies/invalid, per-port counters
  show sockets                       sockets, their queues and connected guests
  help                               this text
  quit                               disconnect every guest, close the ports and exit
lines starting with # are comments";

/// Parses one line. `Ok(None)` for blank lines and comments.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let cmd = match words.as_slice() {
        ["socket", path, "port", port, "queue", queue, options @ ..] => Command::Socket {
            path: parse_path(path)?,
            port: parse_num(port, "port")?,
            queues: vec![parse_num(queue, "queue")?],
            access: parse_access(options)?,
        },
        ["socket", path, "port", port, "queues", queues, options @ ..] => Command::Socket {
            path: parse_path(path)?,
            port: parse_num(port, "port")?,
            queues: parse_queues(queues)?,
            access: parse_access(options)?,
        },
        ["socket", ..] => return Err(format!("usage: {SOCKET_USAGE}")),
        ["remove", path] => Command::Remove { path: parse_path(path)? },
        ["remove", ..] => return Err("usage: remove <path>".into()),
        ["show", "stats"] | ["stats"] => Command::ShowStats,
        ["show", "sockets"] | ["show", "socket"] | ["list"] => Command::ShowSockets,
        ["show", ..] => return Err("usage: show stats | show sockets".into()),
        ["help"] | ["?"] => Command::Help,
        ["quit"] | ["exit"] => Command::Quit,
        [other, ..] => return Err(format!("unknown command '{other}' (try 'help')")),
        [] => return Ok(None),
    };
    Ok(Some(cmd))
}

const SOCKET_USAGE: &str =
    "socket <path> port <p> queue <q> | queues <q0>,<q1>,.. [owner U] [group G] [mode OCTAL] [allow-uid U,..] [allow-gid G,..]";

/// A list of distinct NIC queues, at most a region's queue pairs.
fn parse_queues(s: &str) -> Result<Vec<u16>, String> {
    let max = shm_contract::layout::MAX_QUEUE_PAIRS as usize;
    let mut queues = Vec::new();
    for word in s.split(',') {
        let q = parse_num(word, "queue")?;
        if queues.contains(&q) {
            return Err(format!("queue {q} is named twice in '{s}'"));
        }
        queues.push(q);
    }
    if queues.len() > max {
        return Err(format!("{} queues in '{s}'; a socket serves at most {max}", queues.len()));
    }
    Ok(queues)
}

/// How a socket's queues are shown: `q` or `q0,q1,...`.
pub fn queues_text(queues: &[u16]) -> String {
    queues.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn parse_access(words: &[&str]) -> Result<SocketAccess, String> {
    let mut access = SocketAccess::default();
    let mut it = words.iter();
    while let Some(&key) = it.next() {
        let Some(&value) = it.next() else {
            return Err(format!("socket option '{key}' needs a value (usage: {SOCKET_USAGE})"));
        };
        let list = || value.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
        let slot_taken = match key {
            "owner" => access.owner.replace(value.to_string()).is_some(),
            "group" => access.group.replace(value.to_string()).is_some(),
            "mode" => access.mode.replace(parse_mode(value)?).is_some(),
            "allow-uid" => access.allow_uid.replace(list()).is_some(),
            "allow-gid" => access.allow_gid.replace(list()).is_some(),
            other => return Err(format!("unknown socket option '{other}' (usage: {SOCKET_USAGE})")),
        };
        if slot_taken {
            return Err(format!("socket option '{key}' is given twice"));
        }
    }
    Ok(access)
}

/// An octal permission mode such as `0660`; no set-id or sticky bits.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("mode must be octal permissions such as 0660, not '{s}'"))
}

fn parse_num(s: &str, what: &str) -> Result<u16, String> {
    s.parse::<u16>().map_err(|_| format!("{what} must be a number in 0..=65535, not '{s}'"))
}

/// Socket paths are absolute, fit `sun_path`, and leave room for the guest's `sock:`
/// device name (DPDK cuts device names at 63 bytes).
fn parse_path(s: &str) -> Result<PathBuf, String> {
    if !s.starts_with('/') {
        return Err(format!("socket path '{s}' must be absolute"));
    }
    if s.contains(',') {
        return Err(format!("socket path '{s}' must not contain ',' (guests could not name it in -a sock:...)"));
    }
    if s.len() > 58 {
        return Err(format!(
            "socket path '{s}' is {} bytes; at most 58 fit a guest's device name (sock:<path> < 64 bytes)",
            s.len()
        ));
    }
    Ok(PathBuf::from(s))
}

/// Parses a whole startup file. Errors name the line; a socket path or a NIC queue
/// named twice is an error of the second line. Returns each command with its line number.
pub fn parse_file(text: &str, file: &str) -> Result<Vec<(usize, Command)>, String> {
    let mut out: Vec<(usize, Command)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("{file}:{}: {e}", n + 1);
        let Some(cmd) = parse(line).map_err(at)? else { continue };
        if let Command::Socket { path, port, queues, .. } = &cmd {
            for (m, earlier) in &out {
                if let Command::Socket { path: p2, port: o2, queues: q2, .. } = earlier {
                    if p2 == path {
                        return Err(at(format!("{} is already served (line {m})", path.display())));
                    }
                    if let Some(queue) = queues.iter().find(|q| o2 == port && q2.contains(q)) {
                        return Err(at(format!("port {port} queue {queue} is already served (line {m})")));
                    }
                }
            }
        }
        out.push((n + 1, cmd));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lines() {
        assert_eq!(
            parse("socket /tmp/socket_0_1/sock port 0 queue 1  # comment").unwrap(),
            Some(Command::Socket { path: "/tmp/socket_0_1/sock".into(), port: 0, queues: vec![1], access: SocketAccess::default() })
        );
        assert_eq!(
            parse("socket /a/s port 1 queue 2 group shmguest mode 0600 allow-uid 1000,shmguest allow-gid 50").unwrap(),
            Some(Command::Socket {
                path: "/a/s".into(),
                port: 1,
                queues: vec![2],
                access: SocketAccess {
                    owner: None,
                    group: Some("shmguest".into()),
                    mode: Some(0o600),
                    allow_uid: Some(vec!["1000".into(), "shmguest".into()]),
                    allow_gid: Some(vec!["50".into()]),
                },
            })
        );
        assert_eq!(parse("   # only a comment").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("show stats").unwrap(), Some(Command::ShowStats));
        assert_eq!(parse("quit").unwrap(), Some(Command::Quit));
        assert_eq!(parse("remove /tmp/a/sock").unwrap(), Some(Command::Remove { path: "/tmp/a/sock".into() }));
    }

    #[test]
    fn a_socket_with_several_queues() {
        assert_eq!(
            parse("socket /a/s port 1 queues 0,2,3 mode 0600").unwrap(),
            Some(Command::Socket {
                path: "/a/s".into(),
                port: 1,
                queues: vec![0, 2, 3],
                access: SocketAccess { mode: Some(0o600), ..Default::default() },
            })
        );
        assert_eq!(
            parse("socket /a/s port 0 queues 5").unwrap(),
            parse("socket /a/s port 0 queue 5").unwrap(),
            "one queue either way"
        );
        let err = |line: &str| parse(line).unwrap_err();
        assert_eq!(err("socket /a/s port 0 queues 0,1,0"), "queue 0 is named twice in '0,1,0'");
        assert!(err("socket /a/s port 0 queues 0,,1").contains("queue must be a number in 0..=65535, not ''"));
        assert!(err("socket /a/s port 0 queues 0,x").contains("not 'x'"));
        let many = (0..17).map(|q| q.to_string()).collect::<Vec<_>>().join(",");
        assert!(err(&format!("socket /a/s port 0 queues {many}")).contains("17 queues in"));
        assert!(err("socket /a/s port 0 queues").starts_with("usage: socket"));
        assert_eq!(queues_text(&[3]), "3");
        assert_eq!(queues_text(&[0, 2]), "0,2");
        // A startup file may not give a NIC queue to two sockets, in a list or alone.
        let text = "socket /a/s port 0 queues 0,1\nsocket /b/s port 0 queue 1\n";
        assert_eq!(parse_file(text, "f").unwrap_err(), "f:2: port 0 queue 1 is already served (line 1)");
        let text = "socket /a/s port 0 queue 2\nsocket /b/s port 0 queues 0,1,2\n";
        assert_eq!(parse_file(text, "f").unwrap_err(), "f:2: port 0 queue 2 is already served (line 1)");
        assert!(parse_file("socket /a/s port 0 queues 0,1\nsocket /b/s port 1 queues 0,1\n", "f").is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(parse("socket tmp/x port 0 queue 0").unwrap_err().contains("absolute"));
        assert!(parse("socket /tmp/x port zero queue 0").unwrap_err().contains("port must be a number"));
        assert!(parse("socket /tmp/x port 0").unwrap_err().contains("usage"));
        assert!(parse("socket /tmp/a,b port 0 queue 0").unwrap_err().contains("','"));
        let long = format!("socket /{} port 0 queue 0", "a".repeat(60));
        assert!(parse(&long).unwrap_err().contains("58"));
        assert!(parse("frobnicate").unwrap_err().contains("unknown command"));
        let e = parse_file("socket /a port 0 queue 0\nbogus\n", "f.cmds").unwrap_err();
        assert!(e.starts_with("f.cmds:2:"), "{e}");
    }

    #[test]
    fn bad_command_lines_get_one_clear_error_each() {
        let err = |line: &str| parse(line).unwrap_err();
        assert_eq!(err("sokcet /a/s port 0 queue 0"), "unknown command 'sokcet' (try 'help')");
        assert!(err("socket /a/s port 0").starts_with("usage: socket <path> port <p> queue <q>"));
        assert!(err("socket /a/s port 0 queue").starts_with("usage: socket"));
        assert!(err("socket /a/s queue 0 port 0").starts_with("usage: socket"));
        assert!(err("socket /a/s port 0 queue 70000").contains("queue must be a number in 0..=65535, not '70000'"));
        assert!(err("socket /a/s port -1 queue 0").contains("port must be a number"));
        assert!(err("socket /a/s port 0 queue 0 color red").contains("unknown socket option 'color'"));
        assert!(err("socket /a/s port 0 queue 0 mode").contains("'mode' needs a value"));
        assert!(err("socket /a/s port 0 queue 0 mode 0999").contains("octal"));
        assert!(err("socket /a/s port 0 queue 0 mode 04777").contains("octal"));
        assert!(err("socket /a/s port 0 queue 0 group a group b").contains("given twice"));
        assert!(err("remove").starts_with("usage: remove"));
        assert_eq!(err("show"), "usage: show stats | show sockets");
        assert_eq!(err("show bananas"), "usage: show stats | show sockets");
        for line in ["bogus", "socket /a/s port 0", "socket /a/s port 0 queue 0 x"] {
            assert_eq!(err(line).lines().count(), 1, "one line: {line}");
        }
    }

    #[test]
    fn a_startup_file_names_the_line_of_a_duplicate() {
        let text = "# two queues\nsocket /a/s port 0 queue 0\n\nsocket /b/s port 0 queue 1\nsocket /a/s port 1 queue 0\n";
        assert_eq!(parse_file(text, "f").unwrap_err(), "f:5: /a/s is already served (line 2)");
        let text = "socket /a/s port 0 queue 0\nsocket /b/s port 0 queue 0\n";
        assert_eq!(parse_file(text, "f").unwrap_err(), "f:2: port 0 queue 0 is already served (line 1)");
        let ok = parse_file("socket /a/s port 0 queue 0\n\nshow stats\n", "f").unwrap();
        assert_eq!(ok.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 3]);
    }
}
