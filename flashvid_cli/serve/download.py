"""``http(s)://`` video URLs, fetched under ``--allow-url-download``: a size cap, a time limit, redirects followed
one hop at a time with every hop checked again, and hosts that resolve to a private, loopback, link-local or other
non-public address refused unless ``--allow-private-urls``.

Every hop resolves its host once, checks every address, and connects to the first of them by number (the URL's
host replaced by the address, the ``Host`` header and TLS's SNI and certificate check still the name), so a DNS
answer that changes between the check and the connection (DNS rebinding) never reaches a refused address. With
``--allow-private-urls`` nothing is checked and httpx resolves the name itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlparse

from .errors import APIError, bad_request

MAX_REDIRECTS = 5


def check_host(url: str, allow_private: bool) -> str | None:
    """Refuse ``url`` (APIError 400) unless it is http(s) with a host whose every address is public; return the
    address to connect to (the first the resolver gave, as text), or None with ``allow_private`` (nothing resolved)."""
    parsed = urlparse(url)
    if parsed.scheme.lower() not in {"http", "https"}:
        raise bad_request(f"a video URL (or a redirect) to scheme {parsed.scheme!r}: only http(s) is downloaded",
                          "unsupported_url")
    host = parsed.hostname
    if not host:
        raise bad_request(f"the video URL {url[:100]!r} has no host", "invalid_url")
    if allow_private:
        return None
    try:
        port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise bad_request(f"the video URL's host {host!r} does not resolve", "download_failed") from None
    if not infos:
        raise bad_request(f"the video URL's host {host!r} does not resolve", "download_failed")
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise bad_request(f"the video URL's host {host!r} resolves to {address}, a private, loopback or "
                              "link-local address: refused (start the server with --allow-private-urls to allow it)",
                              "private_address")
    return infos[0][4][0].split("%", 1)[0]


def pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """The request for ``url`` connecting to ``address`` (from check_host): the URL with its host replaced by the
    address, and the ``Host`` header and (for https) the ``sni_hostname`` extension that keep the name, so the
    server, TLS's SNI and the certificate check see the name. Unchanged, with no headers, when ``address`` is None."""
    import httpx

    if address is None:
        return url, {}, {}
    parsed = httpx.URL(url)
    name = parsed.raw_host.decode("ascii")  # IDNA-encoded, as httpx would send it
    headers = {"Host": parsed.netloc.decode("ascii")}  # the name, with the port when the URL names one
    extensions = {"sni_hostname": name} if parsed.scheme == "https" else {}
    return str(parsed.copy_with(host=address)), headers, extensions


def download(url: str, folder: Path, max_bytes: int, timeout_s: float, allow_private: bool) -> Path:
    """Fetch ``url`` into ``folder`` as ``<sha256 of the bytes>.video`` (written whole or not at all; kept as it is
    when there already), so a conversation that resends the URL gets the same file and so the same caches.

    Raises APIError: 400 for a refused or unreachable URL, a non-200 answer, too many redirects or the time limit
    ``timeout_s`` (seconds, for the whole download) passed; 413 when the body is over ``max_bytes``.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    part = folder / f"{uuid.uuid4().hex}.part"
    with httpx.Client(follow_redirects=False, timeout=timeout_s, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target, headers, extensions = pinned(url, check_host(url, allow_private))
            try:
                with client.stream("GET", target, headers=headers, extensions=extensions) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise bad_request(f"downloading the video URL got HTTP {response.status_code}",
                                          "download_failed")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise _too_large(int(declared), max_bytes)
                    size, digest = 0, hashlib.sha256()
                    with part.open("wb") as out:
                        for chunk in response.iter_bytes(1 << 16):
                            size += len(chunk)
                            if size > max_bytes:
                                raise _too_large(size, max_bytes)
                            if time.monotonic() > deadline:
                                raise _slow(timeout_s)
                            out.write(chunk)
                            digest.update(chunk)
                    dest = folder / f"{digest.hexdigest()}.video"
                    if not dest.exists():
                        part.replace(dest)
                    return dest
            except httpx.TimeoutException:
                raise _slow(timeout_s) from None
            except httpx.HTTPError as exc:
                raise bad_request(f"downloading the video URL failed: {type(exc).__name__}: {exc}",
                                  "download_failed") from None
            finally:
                part.unlink(missing_ok=True)
    raise bad_request(f"the video URL redirected more than {MAX_REDIRECTS} times", "too_many_redirects")


def _too_large(size: int, cap: int) -> APIError:
    return APIError(413, f"the video URL's body is over {cap:,} bytes (at least {size:,}; --max-data-bytes)",
                    "payload_too_large")


def _slow(timeout_s: float) -> APIError:
    return bad_request(f"downloading the video URL took longer than {timeout_s:g} s (--download-timeout)",
                       "download_timeout")
