"""Which URLs may receive webhooks: http(s) only, and (unless `webhook_allow_private`) only hosts
whose every address is public. Checked at creation and again at each delivery, where the
request then goes to the address that was checked (a DNS answer that changes in between,
DNS rebinding, cannot send it elsewhere)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_URL_LENGTH = 2048


class TargetRefused(Exception):
    """The URL may not receive webhooks; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    #: the URL with the host replaced by the checked address (what is connected to)
    pinned_url: str
    #: the `Host` header (the original host and port)
    host_header: str
    https: bool


def _refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "a non-public address"
    return None


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL that may be registered; `TargetRefused` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"url: at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("url: must start with http:// or https://")
    if not parts.hostname:
        raise TargetRefused("url: has no host")
    if parts.username or parts.password:
        raise TargetRefused("url: must not contain credentials (user:password@)")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(url: str, allow_private: bool) -> Target:
    """Checks `url` and resolves its host; every address must be public unless `allow_private`.
    Raises `TargetRefused`."""
    scheme, host, port = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"url: cannot resolve host {host!r} ({exc})") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
    if not addresses:
        raise TargetRefused(f"url: host {host!r} has no address")
    if not allow_private:
        for ip in addresses:
            if (why := _refused_address(ip)) is not None:
                raise TargetRefused(f"url: host {host!r} resolves to {ip}, {why}; webhooks go to public addresses only")
    ip = addresses[0]
    parts = urlsplit(url.strip())
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{shown}:{port}"
    default_port = 443 if scheme == "https" else 80
    host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
    if ":" in (parts.hostname or "") and port == default_port:
        host_header = f"[{parts.hostname}]"
    elif ":" in (parts.hostname or ""):
        host_header = f"[{parts.hostname}]:{port}"
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url=url, host=host, pinned_url=pinned, host_header=host_header or host, https=scheme == "https")
