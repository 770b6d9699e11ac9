//! `dpdk-io-proxy-ctl [--ctl PATH] <command>...`: sends one command of the proxy's
//! command set (`socket ...`, `remove ...`, `show stats`, `show sockets`, `help`, `quit`)
//! to a running `dpdk-io-proxy` over its admin socket and prints the answer. Exit status
//! 0 when the command succeeded; 1 with the error line on stderr otherwise (2: usage).
//! No DPDK here.

#[path = "../ctl_proto.rs"]
mod ctl_proto;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use ctl_proto::{error_line, DEFAULT_CTL_PATH, MAX_REQUEST};

/// How long the proxy may take to answer (a `socket` command sets a port up).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn usage() -> String {
    format!(
        "usage: dpdk-io-proxy-ctl [--ctl PATH] <command>...\n\
         Sends <command> (e.g. 'show stats', 'socket /run/q0.sock port 0 queue 0', 'remove /run/q0.sock')\n\
         to the dpdk-io-proxy serving the admin socket PATH (default {DEFAULT_CTL_PATH}) and prints\n\
         the answer. Exit status 0 on success, 1 with the error line otherwise."
    )
}

fn run(args: &[String]) -> Result<String, (u8, String)> {
    let mut path = DEFAULT_CTL_PATH.to_string();
    let mut words: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ctl" if words.is_empty() => path = it.next().ok_or((2, "--ctl needs a path".to_string()))?.clone(),
            "-h" | "--help" if words.is_empty() => return Err((0, usage())),
            w => words.push(w),
        }
    }
    if words.is_empty() {
        return Err((2, usage()));
    }
    let line = words.join(" ");
    if line.contains('\n') || line.len() + 1 > MAX_REQUEST {
        return Err((2, format!("a command is one line of at most {} bytes", MAX_REQUEST - 1)));
    }
    let mut s = UnixStream::connect(&path).map_err(|e| (1, format!("error: cannot connect to {path}: {e}")))?;
    let io_err = |e: std::io::Error| (1, format!("error: {path}: {e}"));
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io_err)?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io_err)?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(io_err)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err((1, format!("error: {path}: no answer (not an allowed user?)")));
    }
    Ok(answer)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(answer) => {
            print!("{answer}");
            let _ = std::io::stdout().flush();
            match error_line(&answer) {
                Some(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
                None => ExitCode::SUCCESS,
            }
        }
        Err((0, text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, text)) => {
            eprintln!("{text}");
            ExitCode::from(code)
        }
    }
}
