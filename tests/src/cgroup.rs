//! A CPU limit for a test's own threads, as a multi-tenant host limits a tenant (a
//! container's cgroup `cpu.max`): the hostile harness runs its control-plane attackers
//! under one, so that what the attacker's own process costs the machine is bounded and
//! what remains of the good guest's loss is what the proxy spends for the attacker.
//!
//! One thread at a time is moved in and out: cgroup v1's `cpu` controller takes a
//! thread id in `tasks`; cgroup v2 takes one in `cgroup.threads` of a threaded child
//! of the process's own cgroup (with `+cpu` in the parent's `cgroup.subtree_control`).
//! Threads the limited thread starts inherit the limit. Needs root. The v1 path is the
//! one this project's machines have (the `cpu` controller on a v1 hierarchy); the v2
//! path follows the kernel's cgroup-v2.rst ("Threads") and fails with the kernel's
//! error where the process's cgroup cannot host a threaded child.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which interface the limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// cgroup v1 `cpu` controller: `cpu.cfs_quota_us`, `cpu.cfs_period_us`, `tasks`.
    V1,
    /// cgroup v2, threaded child: `cpu.max`, `cgroup.threads`.
    V2,
}

/// A cgroup with a CPU quota; removed when dropped (once no thread is left in it).
#[derive(Debug)]
pub struct CpuLimit {
    kind: Kind,
    /// The limited cgroup.
    dir: PathBuf,
    /// Where a thread goes back to: the cgroup this process's threads were in.
    home: PathBuf,
    /// The quota: this much CPU time per `period`.
    pub quota: Duration,
    pub period: Duration,
}

impl CpuLimit {
    /// A new cgroup `name` (made unique with this process's id) whose threads together
    /// get at most `quota` of CPU time per `period`.
    pub fn create(name: &str, quota: Duration, period: Duration) -> io::Result<CpuLimit> {
        let name = format!("{name}-{}", std::process::id());
        let cgroups = fs::read_to_string("/proc/self/cgroup")?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        // v1 first: where `cpu` is bound to a v1 hierarchy, v2 cannot have it.
        if let (Some(mount), Some(own)) = (v1_cpu_mount(&mountinfo), v1_cpu_path(&cgroups)) {
            let home = mount.join(own.trim_start_matches('/'));
            let dir = home.join(&name);
            make_dir(&dir)?;
            let limit = CpuLimit { kind: Kind::V1, dir, home, quota, period };
            limit.write("cpu.cfs_period_us", &period.as_micros().to_string())?;
            limit.write("cpu.cfs_quota_us", &quota.as_micros().to_string())?;
            return Ok(limit);
        }
        let (Some(mount), Some(own)) = (v2_mount(&mountinfo), v2_path(&cgroups)) else {
            return Err(io::Error::other("no cgroup hierarchy with the cpu controller (v1 `cpu` or v2) is mounted"));
        };
        let home = mount.join(own.trim_start_matches('/'));
        let available = fs::read_to_string(home.join("cgroup.controllers")).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == "cpu") {
            return Err(io::Error::other(format!(
                "the cpu controller is not available in {} (cgroup.controllers: {:?})",
                home.display(),
                available.trim()
            )));
        }
        let dir = home.join(&name);
        make_dir(&dir)?;
        let limit = CpuLimit { kind: Kind::V2, dir, home: home.clone(), quota, period };
        limit.write("cgroup.type", "threaded")?;
        fs::write(home.join("cgroup.subtree_control"), "+cpu")
            .map_err(|e| io::Error::new(e.kind(), format!("{}: +cpu: {e}", home.join("cgroup.subtree_control").display())))?;
        limit.write("cpu.max", &format!("{} {}", quota.as_micros(), period.as_micros()))?;
        Ok(limit)
    }

    /// The limit as a fraction of one CPU.
    pub fn share(&self) -> f64 {
        self.quota.as_secs_f64() / self.period.as_secs_f64()
    }

    /// Moves the calling thread into the limited cgroup.
    pub fn enter(&self) -> io::Result<()> {
        move_thread(self.kind, &self.dir)
    }

    /// Moves the calling thread back to the process's own cgroup (a thread that a
    /// limited thread started, and that must not be limited).
    pub fn leave(&self) -> io::Result<()> {
        move_thread(self.kind, &self.home)
    }

    /// How often the quota held the limited threads back so far: (periods in which
    /// it did, time held back) from `cpu.stat`.
    pub fn throttled(&self) -> (u64, Duration) {
        let text = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |k: &str| -> u64 {
            text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
        };
        match self.kind {
            // v1: throttled_time in ns.
            Kind::V1 => (field("nr_throttled "), Duration::from_nanos(field("throttled_time "))),
            Kind::V2 => (field("nr_throttled "), Duration::from_micros(field("throttled_usec "))),
        }
    }

    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {value}: {e}", path.display())))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Threads that ended left it; one still in it keeps it (rmdir fails: EBUSY).
        let _ = fs::remove_dir(&self.dir);
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display()))),
    }
}

fn move_thread(kind: Kind, dir: &Path) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let file = dir.join(match kind {
        Kind::V1 => "tasks",
        Kind::V2 => "cgroup.threads",
    });
    fs::write(&file, tid.to_string()).map_err(|e| io::Error::new(e.kind(), format!("{}: {tid}: {e}", file.display())))
}

/// The mount point of the v1 hierarchy that has the `cpu` controller.
fn v1_cpu_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let options = r.nth(1)?;
        options.split(',').any(|o| o == "cpu").then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or("")))
    })
}

/// This process's path in the v1 hierarchy that has `cpu` (`/proc/self/cgroup`:
/// `id:controllers:path`).
fn v1_cpu_path(cgroups: &str) -> Option<String> {
    cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "cpu").then(|| path.to_string())
    })
}

fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or("")))
    })
}

fn v2_path(cgroups: &str) -> Option<String> {
    cgroups.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v1_cpu_hierarchy_and_the_v2_mount() {
        assert_eq!(v1_cpu_mount(MOUNTINFO), Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        assert_eq!(v2_mount(MOUNTINFO), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let joint = "40 31 0:37 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(v1_cpu_mount(joint), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(v1_cpu_mount("41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"), None);
    }

    #[test]
    fn finds_this_process_s_paths() {
        let cgroups = "4:memory:/m\n2:cpu,cpuacct:/user.slice\n0::/user.slice/x.scope\n";
        assert_eq!(v1_cpu_path(cgroups).as_deref(), Some("/user.slice"));
        assert_eq!(v2_path(cgroups).as_deref(), Some("/user.slice/x.scope"));
        assert_eq!(v1_cpu_path("0::/\n"), None);
    }
}
