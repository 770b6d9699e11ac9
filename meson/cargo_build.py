#!/usr/bin/env python3
"""Runs cargo for the meson build and copies what it built to where meson wants it.

    cargo_build.py --cargo CARGO --manifest-path Cargo.toml [--target-dir DIR]
                   --profile release [--env KEY=VALUE ...] --out-dir OUTDIR
                   [-p PACKAGE ...] ARTIFACT...

Cargo decides what is out of date (meson runs this every time); an artifact is copied
only when it changed, so meson and ninja see stable timestamps otherwise.
"""

import argparse
import filecmp
import os
import shutil
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cargo", required=True)
    ap.add_argument("--manifest-path", required=True)
    ap.add_argument("--target-dir", default="")
    ap.add_argument("--profile", default="release")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("-p", "--package", action="append", default=[])
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for cargo's environment")
    ap.add_argument("artifacts", nargs="+", help="file names cargo puts in <target>/<profile>")
    args = ap.parse_args()

    cmd = [args.cargo, "build", "--manifest-path", args.manifest_path, "--profile", args.profile]
    for p in args.package:
        cmd += ["-p", p]
    target_dir = args.target_dir or os.environ.get("CARGO_TARGET_DIR", "")
    if not target_dir:
        target_dir = os.path.join(os.path.dirname(os.path.abspath(args.manifest_path)), "target")
    cmd += ["--target-dir", target_dir]
    env = dict(os.environ)
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    shown = " ".join(args.env + cmd)
    print("cargo_build.py:", shown, flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        return rc

    # cargo's "dev" profile builds into target/debug, the others into target/<name>.
    profile_dir = "debug" if args.profile == "dev" else args.profile
    os.makedirs(args.out_dir, exist_ok=True)
    for name in args.artifacts:
        name = os.path.basename(name)
        src = os.path.join(target_dir, profile_dir, name)
        dst = os.path.join(args.out_dir, name)
        if not os.path.exists(src):
            print(f"cargo_build.py: cargo did not produce {src}", file=sys.stderr)
            return 1
        if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):
            continue
        # Copy then rename: a running process may still map the old file.
        tmp = dst + ".tmp"
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
