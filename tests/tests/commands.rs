//! Bad command lines and startup files. A startup file with an error makes the proxy
//! refuse to start, with one line naming the file, the line and the reason, and the
//! sockets it made for earlier lines removed again. The same mistakes typed on stdin
//! print one `error:` line each and the proxy carries on. No stale socket or directory
//! is left behind either way.

use std::path::Path;
use std::time::Duration;

use e2e_tests::*;

fn null_proxy(s: &Scratch, commands: Vec<String>) -> Proc {
    start_proxy(s, &ProxyConfig { eal: vec!["--vdev".into(), "net_null0".into()], commands, extra: vec![], netns: None })
}

/// The proxy's own lines (not EAL's) in its output.
fn proxy_errors(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("dpdk-io-proxy:")).collect()
}

#[test]
fn a_startup_file_with_an_error_is_refused_with_its_line_and_leaves_nothing_behind() {
    let s = Scratch::new("badcmds");
    let cmds = s.path("dpdk-io-proxy.cmds");
    let good = s.path("a/sock");
    std::fs::write(s.path("file"), "not a directory").unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![format!("socket {} port 0 queue 0", good.display()), "# comment".into(), "sokcet /x/s port 0 queue 1".into()],
            format!("{}:3: unknown command 'sokcet' (try 'help')", cmds.display()),
        ),
        (
            vec![format!("socket {} port 0 queue 0", good.display()), format!("socket {} port 0", s.path("b/sock").display())],
            format!("{}:2: usage: socket <path> port <p> queue <q>", cmds.display()),
        ),
        (
            vec![format!("socket {} port 0 queue 0", good.display()), format!("socket {} port 0 queue 1", good.display())],
            format!("{}:2: {} is already served (line 1)", cmds.display(), good.display()),
        ),
        (
            // Parses, but port 5 does not exist: found while the sockets are being made.
            vec![format!("socket {} port 0 queue 0", good.display()), format!("socket {} port 5 queue 0", s.path("c/sock").display())],
            format!("{}:2: port 5 does not exist; probed ports: 0 (net_null0)", cmds.display()),
        ),
        (
            vec![format!("socket {} port 0 queue 0", good.display()), format!("socket {} port 0 queue 1", s.path("file/sock").display())],
            format!("{}:2: {} is not a directory", cmds.display(), s.path("file").display()),
        ),
        (
            vec![format!("socket {} port 0 queue 0", good.display()), format!("socket {} port 0 queue 1", s.path("d/e/sock").display()), "socket /proc/shm-e2e-nope/sock port 0 queue 2".into()],
            format!("{}:3: cannot create /proc/shm-e2e-nope", cmds.display()),
        ),
    ];
    for (commands, expected) in cases {
        let p = null_proxy(&s, commands.clone());
        let (code, out) = p.wait(Duration::from_secs(30));
        assert_ne!(code, Some(0), "must refuse to start: {commands:?}\n{out}");
        assert!(!out.contains("IO_PROXY: ready"), "{out}");
        let errors = proxy_errors(&out);
        assert_eq!(errors.len(), 1, "one error line for {commands:?}:\n{out}");
        assert!(errors[0].starts_with(&format!("dpdk-io-proxy: {expected}")), "got {:?}\nwanted {expected:?}", errors[0]);
        for leftover in ["a", "b", "c", "d"] {
            assert!(!s.path(leftover).exists(), "{leftover} left behind after {commands:?}\n{out}");
        }
    }
}

#[test]
fn bad_interactive_commands_print_an_error_and_the_proxy_carries_on() {
    let s = Scratch::new("badstdin");
    let sock = s.path("a/sock");
    // Two ports: a socket on the second one gets as far as making its file.
    let mut p = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into(), "--vdev".into(), "net_null1".into()],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: vec![],
            netns: None,
        },
    );
    p.out.wait_contains("IO_PROXY: ready", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", p.out.text()));
    std::fs::write(s.path("file"), "x").unwrap();
    let bad: Vec<(String, String)> = vec![
        ("frobnicate".into(), "error: unknown command 'frobnicate' (try 'help')".into()),
        (format!("socket {} port 0", s.path("b/sock").display()), "error: usage: socket <path> port <p> queue <q>".into()),
        (format!("socket {} port 9 queue 0", s.path("c/sock").display()), "error: port 9 does not exist; probed ports: 0 (net_null0), 1 (net_null1)".into()),
        (format!("socket {} port 0 queue 0", sock.display()), format!("error: {} is already served", sock.display())),
        (format!("socket {} port 0 queue 0", s.path("d/sock").display()), format!("error: port 0 queue 0 is already served by {}", sock.display())),
        (format!("socket {} port 0 queue 1", s.path("e/sock").display()), "error: port 0 was configured with 1 queue(s) at startup; queue 1 needs a restart".into()),
        (format!("socket {} port 1 queue 0", s.path("file/sock").display()), format!("error: {} is not a directory", s.path("file").display())),
        (format!("socket {} port 1 queue 0", s.path("f/g/sock").display()), format!("ok: serving port 1 queue 0 on {}", s.path("f/g/sock").display())),
        ("remove /nowhere/sock".into(), "error: /nowhere/sock is not served".into()),
        ("show".into(), "error: usage: show stats | show sockets".into()),
    ];
    for (line, expected) in &bad {
        let from = p.out.text().len();
        p.send(line);
        p.out
            .wait_for(expected, Duration::from_secs(10), |t| t[from..].contains(expected.as_str()))
            .unwrap_or_else(|e| panic!("{line}: {e}\n{}", &p.out.text()[from..]));
        let answer = p.out.text()[from..].to_string();
        let want = if expected.starts_with("error:") { 1 } else { 0 };
        assert_eq!(answer.lines().filter(|l| l.starts_with("error:")).count(), want, "{line}: one error line\n{answer}");
    }
    assert!(p.is_running(), "{}", p.out.text());
    for leftover in ["b", "c", "d", "e"] {
        assert!(!s.path(leftover).exists(), "{leftover} left behind\n{}", p.out.text());
    }
    // A second proxy naming the live socket is refused and does not remove it.
    let s2 = Scratch::new("badstdin2");
    let second = null_proxy(&s2, vec![format!("socket {} port 0 queue 0", sock.display())]);
    let (code, out) = second.wait(Duration::from_secs(30));
    assert_ne!(code, Some(0), "{out}");
    assert_eq!(proxy_errors(&out), vec![format!("dpdk-io-proxy: {}:1: {} is served by another process", s2.path("dpdk-io-proxy.cmds").display(), sock.display())]);
    assert!(Path::new(&sock).exists(), "the first proxy's socket must survive");
    // Still serving, and a good command still works.
    let from = p.out.text().len();
    p.send("show sockets");
    p.out.wait_for("show sockets", Duration::from_secs(10), |t| t[from..].contains("no guest")).unwrap();
    assert!(p.out.text()[from..].contains(&format!("{} port 0 queue 0: no guest", sock.display())));
    p.send(&format!("remove {}", s.path("f/g/sock").display()));
    p.out.wait_contains("ok: removed", Duration::from_secs(10)).unwrap();
    assert!(!s.path("f").exists(), "remove takes the directories it made too");
    p.send("quit");
    let (code, out) = p.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
    assert!(!sock.exists() && !s.path("a").exists(), "quit removes the socket and its directory");
}
