"""
Run a command under the system call filters a systemd unit file asks for,
without systemd: ``python syscall_filter.py UNIT [--deny-write-execute] -- COMMAND...``.

From ``UNIT`` it applies, as seccomp filters loaded with libseccomp through
ctypes, what systemd 252 would: ``SystemCallFilter=`` (its ``@groups``
expanded by ``systemd-analyze syscall-filter``, ``~`` lines removing from the
allow-list, ``SystemCallErrorNumber=`` for the refusals) and
``RestrictAddressFamilies=`` (other families get EAFNOSUPPORT). With
``--deny-write-execute`` it adds systemd's ``MemoryDenyWriteExecute=`` rules
(no mapping both writable and executable, no mprotect to executable). Then it
executes COMMAND, which inherits the filters (and ``no_new_privs``).

Nothing else of the unit (namespaces, read-only file systems, users) is
reproduced here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import subprocess
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000
#: Address families are below this on Linux.
AF_MAX = 46


def errno_action(number: int) -> int:
    """libseccomp's SCMP_ACT_ERRNO(number)."""
    return 0x00050000 | (number & 0xFFFF)


class ArgCompare(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCompare)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class Filter:
    """One seccomp filter under construction."""

    def __init__(self, lib: ctypes.CDLL, default_action: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default_action)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *compares: tuple[int, int, int, int]) -> bool:
        """Add a rule; False when this architecture has no such system call."""
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return False
        array = (ArgCompare * max(1, len(compares)))(*[ArgCompare(*c) for c in compares])
        result = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(compares), array)
        if result < 0:
            raise OSError(-result, f"seccomp rule for {name}: {os.strerror(-result)}")
        return True

    def load(self) -> None:
        result = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if result < 0:
            raise OSError(-result, f"seccomp_load: {os.strerror(-result)}")


def syscall_groups() -> dict[str, list[str]]:
    """Every group ``systemd-analyze syscall-filter`` knows, with its members."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], check=True,
                          capture_output=True, text=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    """System call names, with groups expanded recursively."""
    names: set[str] = set()
    for item in items:
        if item.startswith("@"):
            names |= expand(groups[item], groups)
        else:
            names.add(item)
    return names


def unit_settings(path: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: key -> every value given, in order."""
    settings: dict[str, list[str]] = {}
    for line in open(path, encoding="utf-8"):
        match = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if match:
            settings.setdefault(match.group(1), []).append(match.group(2).strip())
    return settings


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """The allow-list the unit's SystemCallFilter= lines make."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in settings.get("SystemCallFilter", []):
        if value.startswith("~"):
            assert allowed is not None, "a deny list before an allow list is not handled here"
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed = (allowed or set()) | expand(value.split(), groups)
    if allowed is None:
        raise SystemExit("the unit has no SystemCallFilter=")
    return allowed


def apply(unit: str, deny_write_execute: bool) -> None:
    """Load the unit's filters into this process."""
    lib = _libseccomp()
    settings = unit_settings(unit)
    error = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
    calls = Filter(lib, errno_action(getattr(errno, error)))
    for name in sorted(allowed_syscalls(settings)):
        calls.rule(SCMP_ACT_ALLOW, name)

    families = Filter(lib, SCMP_ACT_ALLOW)
    allowed_families = {getattr(socket, name) for value in settings["RestrictAddressFamilies"]
                        for name in value.split()}
    refuse = errno_action(errno.EAFNOSUPPORT)
    for family in range(AF_MAX):
        if family not in allowed_families:
            families.rule(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
    families.rule(refuse, "socket", (0, SCMP_CMP_GE, AF_MAX, 0))

    filters = [calls, families]
    if deny_write_execute:
        memory = Filter(lib, SCMP_ACT_ALLOW)
        eperm = errno_action(errno.EPERM)
        both = PROT_WRITE | PROT_EXEC
        memory.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, both, both))
        for name in ("mprotect", "pkey_mprotect"):
            memory.rule(eperm, name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        memory.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        filters.append(memory)
    # Loaded last first: once the allow-list is in, seccomp() itself is refused.
    for one in reversed(filters):
        one.load()


def main(argv: list[str]) -> None:
    unit, *rest = argv
    deny_write_execute = "--deny-write-execute" in rest
    command = rest[rest.index("--") + 1:]
    apply(unit, deny_write_execute)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
