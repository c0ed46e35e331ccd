"""What a rank knows about the machine it runs on: the boot id, which processes share a host
or a ``/dev/shm``, and which network interface its sockets bind to.

Every other module asks here; nothing else reads ``/proc/sys/kernel/random/boot_id`` or
the interface table.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from ringcomm.errors import TransportError

SHM_DIR = "/dev/shm"
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_CACHES = "/sys/devices/system/cpu/cpu0/cache"
_SIOCGIFADDR = 0x8915


def boot_id() -> str:
    """This boot of this machine (changes at every reboot); "" where the kernel does not
    say."""
    try:
        with open(_BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


def last_level_cache_bytes(caches: str = _CACHES) -> int | None:
    """The size of the first CPU's largest data (or unified) cache, as Linux's sysfs
    (``caches``) tells it; None where it does not."""
    largest = None
    try:
        names = os.listdir(caches)
    except OSError:
        return None
    for name in names:
        try:
            with open(f"{caches}/{name}/type") as f:
                kind = f.read().strip()
            with open(f"{caches}/{name}/size") as f:
                raw = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1:].upper(), 1)
        digits = raw[:-1] if scale > 1 else raw
        if kind == "Instruction" or not digits.isdigit():
            continue
        largest = max(largest or 0, int(digits) * scale)
    return largest


def host_identity() -> str:
    """Same string on every process of one machine (boot): decides ipc:// vs tcp:// and
    which ranks share a host."""
    return f"{socket.gethostname()}/{boot_id()}"


def shm_identity() -> str | None:
    """Equal on two processes exactly when they can share a /dev/shm segment: same boot,
    same /dev/shm mount, same user. None where there is no writable /dev/shm."""
    boot = boot_id()
    try:
        st = os.stat(SHM_DIR)
    except OSError:
        return None
    if not boot or not os.access(SHM_DIR, os.W_OK):
        return None
    return f"{boot}/{st.st_dev}/{st.st_ino}/{os.getuid()}"


def interface_addresses() -> list[tuple[str, str]]:
    """(interface name, IPv4 address) of every interface that has one, in kernel order."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                request = struct.pack("256s", name.encode()[:15])
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address
            found.append((name, socket.inet_ntoa(packed[20:24])))
    return found


def address_of_interface(spec: str) -> str:
    """The IPv4 address of the first interface ``spec`` selects, as NCCL_SOCKET_IFNAME and
    GLOO_SOCKET_IFNAME read it: comma-separated name prefixes (``eth,ib``), ``=name`` for an
    exact name, a leading ``^`` to exclude instead (``^lo,docker``).

    Raises:
        TransportError: no interface with an IPv4 address matches.
    """
    exclude = spec.startswith("^")
    exact = spec.lstrip("^").startswith("=")
    names = [n for n in spec.lstrip("^").lstrip("=").split(",") if n]

    def matches(name: str) -> bool:
        return any(name == n if exact else name.startswith(n) for n in names)

    candidates = interface_addresses()
    for name, address in candidates:
        if matches(name) != exclude:
            return address
    have = ", ".join(f"{n} {a}" for n, a in candidates) or "none"
    raise TransportError(
        f"RINGCOMM_SOCKET_IFNAME={spec!r} selects no interface with an IPv4 address (have: {have})"
    )


def local_address_towards(master_addr: str) -> str:
    """The IP address of the interface that routes to ``master_addr`` (no packet is sent)."""
    try:
        infos = socket.getaddrinfo(master_addr, None, socket.AF_INET)
        target = infos[0][4][0]
    except OSError as e:
        raise TransportError(f"cannot resolve master address {master_addr!r}: {e}") from None
    if target.startswith("127."):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))  # a UDP connect only picks the route
        return s.getsockname()[0]


def bind_address(master_addr: str, socket_ifname: str | None) -> str:
    """Where this rank's sockets bind: ``socket_ifname``'s interface if set, else the one
    that routes to ``master_addr``. Never all interfaces."""
    if socket_ifname:
        return address_of_interface(socket_ifname)
    return local_address_towards(master_addr)
