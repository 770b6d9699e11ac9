#!/usr/bin/env python3
"""Prints the directory from which the installed DPDK's EAL loads drivers by itself.

    pmd_dir.py LIBDIR

EAL embeds it in librte_eal.so as "DPDK_PLUGIN_PATH=<dir>" (the same string
dpdk-pmdinfo.py reads); on Debian 12 it is /usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0.
Falls back to the only LIBDIR/dpdk/pmds-* directory.
"""

import glob
import os
import re
import sys


def main() -> int:
    libdir = sys.argv[1]
    for name in ("librte_eal.so", *sorted(glob.glob(os.path.join(libdir, "librte_eal.so.*")))):
        path = os.path.join(libdir, name)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            m = re.search(rb"DPDK_PLUGIN_PATH=([^\0]+)\0", f.read())
        if m:
            print(m.group(1).decode())
            return 0
    dirs = sorted(glob.glob(os.path.join(libdir, "dpdk", "pmds-*")))
    if len(dirs) == 1:
        print(dirs[0])
        return 0
    print(f"pmd_dir.py: cannot tell DPDK's driver directory under {libdir}; pass -Dpmd_dir=...",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
