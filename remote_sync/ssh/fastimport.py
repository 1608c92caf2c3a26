"""Importing asyncssh without its slowest start-up step.

What it owns: :func:`import_asyncssh`, which the command line calls before anything imports
asyncssh. At import, ``asyncssh.crypto.pq`` looks for liboqs (post-quantum key exchange) with
``ctypes.util.find_library``, which on Linux runs ``ldconfig -p`` and, when the library is
absent, ``gcc`` and ``ld`` as well: 40-50 ms, about a tenth of a sync that finds nothing to do.
For the length of that one import the lookup is answered from the dynamic linker's own
directories instead, without starting a process; a liboqs installed there is still found and
used. Any other caller of ``find_library`` is unaffected, and so is every other platform.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator


def _linker_dirs() -> Iterator[str]:
    yield from (d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d)
    yield from _ld_so_conf("/etc/ld.so.conf", depth=0)
    arch = getattr(sys.implementation, "_multiarch", None)
    if arch:
        yield from (f"/lib/{arch}", f"/usr/lib/{arch}")
    yield from ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")


def _ld_so_conf(path: str, depth: int) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as conf:
            lines = conf.read().splitlines()
    except OSError:
        return
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include ") and depth < 4:
            for included in sorted(glob.glob(line.split(None, 1)[1].strip())):
                yield from _ld_so_conf(included, depth + 1)
        elif line.startswith("/"):
            yield line


def find_library_quickly(name: str) -> str | None:
    """The path of ``lib<name>.so*`` in the dynamic linker's directories, or None."""
    prefix = f"lib{name}.so"
    searched: set[str] = set()
    for directory in _linker_dirs():
        # Merged-/usr systems list /lib/<arch> and /usr/lib/<arch> (a thousand entries each)
        # twice over: one listing of each real directory, matched by prefix, not by glob.
        real = os.path.realpath(directory)
        if real in searched:
            continue
        searched.add(real)
        try:
            found = [entry for entry in os.listdir(real) if entry.startswith(prefix)]
        except OSError:
            continue
        if found:
            # A versioned file (lib<name>.so.5) is the library itself; a bare lib<name>.so
            # may be a development symlink or a linker script.
            best = min(found, key=lambda entry: (not entry.startswith(prefix + "."), entry))
            return os.path.join(directory, best)
    return None


def import_asyncssh() -> None:
    """Import asyncssh (once), with the quick liboqs lookup on Linux."""
    if "asyncssh" in sys.modules or not sys.platform.startswith("linux"):
        import asyncssh

        return
    import ctypes.util

    original = ctypes.util.find_library
    ctypes.util.find_library = find_library_quickly
    try:
        import asyncssh  # noqa: F401
    finally:
        ctypes.util.find_library = original
