//! The proxy's commands: the startup file (`--cmds FILE`, or `./dpdk-io-proxy.cmds`) and
//! the same commands typed on stdin.

use std::path::PathBuf;

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `socket <path> port <p> queue <q>`: serve NIC queue (p, q) on a unix socket.
    Socket { path: PathBuf, port: u16, queue: u16 },
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

pub const HELP: &str = "\
commands (startup file and stdin):
  socket <path> port <p> queue <q>   serve NIC port p, queue q to one guest on a unix socket
                                     at <path> (its directory is created if missing)
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
        ["socket", path, "port", port, "queue", queue] => Command::Socket {
            path: parse_path(path)?,
            port: parse_num(port, "port")?,
            queue: parse_num(queue, "queue")?,
        },
        ["socket", ..] => return Err("usage: socket <path> port <p> queue <q>".into()),
        ["remove", path] => Command::Remove { path: parse_path(path)? },
        ["remove", ..] => return Err("usage: remove <path>".into()),
        ["show", "stats"] | ["stats"] => Command::ShowStats,
        ["show", "sockets"] | ["show", "socket"] | ["list"] => Command::ShowSockets,
        ["help"] | ["?"] => Command::Help,
        ["quit"] | ["exit"] => Command::Quit,
        [other, ..] => return Err(format!("unknown command '{other}' (try 'help')")),
        [] => return Ok(None),
    };
    Ok(Some(cmd))
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

/// Parses a whole startup file. Errors name the line.
pub fn parse_file(text: &str, file: &str) -> Result<Vec<Command>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match parse(line) {
            Ok(Some(cmd)) => out.push(cmd),
            Ok(None) => {}
            Err(e) => return Err(format!("{file}:{}: {e}", n + 1)),
        }
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
            Some(Command::Socket { path: "/tmp/socket_0_1/sock".into(), port: 0, queue: 1 })
        );
        assert_eq!(parse("   # only a comment").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("show stats").unwrap(), Some(Command::ShowStats));
        assert_eq!(parse("quit").unwrap(), Some(Command::Quit));
        assert_eq!(parse("remove /tmp/a/sock").unwrap(), Some(Command::Remove { path: "/tmp/a/sock".into() }));
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
}
