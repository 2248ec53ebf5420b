"""Fetching the images and PDFs a caller names by URL, for providers that take no URLs (Gemini).

The caller chooses the URL, so the fetch is an SSRF risk: by default only ``https``, and only
public addresses. The host is resolved here, every address it resolves to is checked, and the
connection goes to a checked address (with the original host name for TLS and ``Host``), so a
DNS answer cannot change between the check and the connection. Redirects are followed by hand,
each hop checked the same way. Size and time are bounded (``general_settings.media_fetch``).

Which addresses are public (:func:`_public`): those globally routable, and no others.

- IPv4: ``ipaddress``'s ``is_global`` (which, unlike ``is_private``, excludes the carrier-grade
  NAT range ``100.64.0.0/10``, where a cloud metadata service may live), except multicast,
  which Python 3.11 calls global.
- IPv6: ``is_global`` and in global unicast space (``2000::/3``) or the well-known NAT64 prefix
  ``64:ff9b::/96``. Python 3.11 also calls multicast, site-local (``fec0::/10``) and reserved
  addresses global; the unicast ranges leave those out. The IPv4-mapped (``::ffff:0:0/96``),
  IPv4-compatible (``::/96``) and IPv4-translated (``::ffff:0:0:0/96``) forms, local-use NAT64
  (``64:ff9b:1::/48``) and Teredo (``2001::/32``) are not globally routable, so never public.
- An IPv6 address that embeds an IPv4 address (any of the forms above, and 6to4,
  ``2002::/16``) is public only if the embedded address is too: what such an address reaches
  is often the IPv4 host (through a NAT64 or 6to4 relay, or the host's own dual stack).

Failures are the caller's: a 400 naming the part whose URL could not be used.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import attrs
import httpx
import trio

from ..config import MediaFetchSettings
from ..errors import InvalidRequestError

__all__ = ["MediaFetcher"]

#: Resolves a host name and port to IP address strings (tests substitute their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_MAX_REDIRECTS: Final = 3
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


async def _resolve(host: str, port: int) -> list[str]:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


_IPV6_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
#: Where the last 32 bits are an IPv4 address: NAT64, IPv4-compatible, IPv4-translated (the
#: IPv4-mapped form has ``ipv4_mapped``).
_IPV4_IN_LAST_32_BITS: Final = (
    _NAT64,
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)


def _public(address: str) -> bool:
    """Whether ``address`` is globally routable (the module docstring's rule)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return _routable_ipv4(ip)
    routable = ip.is_global and (ip in _IPV6_UNICAST or ip in _NAT64)
    return routable and all(_routable_ipv4(v4) for v4 in _embedded_ipv4(ip))


def _routable_ipv4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses inside ``ip``: Teredo's server and client, 6to4's, or the last 32
    bits of the IPv4-mapped, -compatible and -translated forms and of NAT64."""
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip.teredo is not None:
        found += ip.teredo
    if any(ip in net for net in _IPV4_IN_LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
    return found


@attrs.define(eq=False)
class MediaFetcher:
    """Replaces ``https`` image and file URLs in a conversation by ``data:`` URLs."""

    _client: httpx.AsyncClient
    _settings: MediaFetchSettings
    _resolve: Resolver = _resolve

    async def inline(self, items: list[dict[str, Any]], *, offset: int) -> list[dict[str, Any]]:
        """``items`` with every remote image and file fetched; items before ``offset`` came from
        the stored conversation (errors name ``previous_response_id``), the rest from
        ``input`` (errors name ``input[i]…``)."""
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            out.append(await self._item(item, f"input[{i - offset}]" if i >= offset else None))
        return out

    async def _item(self, item: dict[str, Any], where: str | None) -> dict[str, Any]:
        if item.get("type") == "message":
            key = "content"
        elif item.get("type") == "function_call_output":
            key = "output"
        else:
            return item
        parts = item.get(key)
        if not isinstance(parts, list):
            return item
        changed = False
        new_parts: list[Any] = []
        for j, part in enumerate(parts):
            new = await self._part(part, f"{where}.{key}[{j}]" if where else None)
            changed = changed or new is not part
            new_parts.append(new)
        return {**item, key: new_parts} if changed else item

    async def _part(self, part: Any, where: str | None) -> Any:
        if not isinstance(part, dict):
            return part
        if part.get("type") == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and not url.startswith("data:"):
                param = f"{where}.image_url" if where else "previous_response_id"
                data_url, _ = await self.fetch(url, param, expect="image/")
                return {**part, "image_url": data_url}
        elif part.get("type") == "input_file":
            url = part.get("file_url")
            if isinstance(url, str) and part.get("file_data") is None:
                param = f"{where}.file_url" if where else "previous_response_id"
                data_url, name = await self.fetch(url, param, expect="")
                rest = {k: v for k, v in part.items() if k != "file_url"}
                return {"filename": name, **rest, "file_data": data_url}
        return part

    async def fetch(self, url: str, param: str, *, expect: str) -> tuple[str, str]:
        """``(data URL, file name)`` of ``url``; a 400 naming ``param`` when it cannot be used."""
        s = self._settings
        with trio.move_on_after(s.timeout) as scope:
            for _ in range(_MAX_REDIRECTS + 1):
                request = await self._checked_request(url, param)
                try:
                    response = await self._client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise _bad(param, f"could not fetch {url!r} ({type(exc).__name__})") from exc
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise _bad(param, f"fetching {url!r} answered HTTP {response.status_code}")
                    media_type = response.headers.get("content-type", "").split(";")[0].strip()
                    if not media_type.startswith(expect):
                        raise _bad(param, f"{url!r} is {media_type or 'untyped'}, not {expect}*")
                    body = await self._read(response, url, param)
                finally:
                    await response.aclose()
                name = urlsplit(url).path.rsplit("/", 1)[-1] or "file"
                encoded = base64.b64encode(body).decode()
                return f"data:{media_type};base64,{encoded}", name
            raise _bad(param, f"fetching {url!r} was redirected more than {_MAX_REDIRECTS} times")
        assert scope.cancelled_caught
        raise _bad(param, f"fetching {url!r} took longer than {s.timeout} s")

    async def _read(self, response: httpx.Response, url: str, param: str) -> bytes:
        limit = self._settings.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _bad(param, f"{url!r} is larger than {limit} bytes")
        parts: list[bytes] = []
        size = 0
        try:
            async for piece in response.aiter_bytes():
                size += len(piece)
                if size > limit:
                    raise _bad(param, f"{url!r} is larger than {limit} bytes")
                parts.append(piece)
        except httpx.HTTPError as exc:
            raise _bad(param, f"could not fetch {url!r} ({type(exc).__name__})") from exc
        return b"".join(parts)

    async def _checked_request(self, url: str, param: str) -> httpx.Request:
        s = self._settings
        parts = urlsplit(url)
        schemes = ("https", "http") if s.allow_http else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise _bad(param, f"only {' and '.join(schemes)} URLs can be fetched, not {url!r}")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                raise _bad(param, f"could not resolve {host!r}") from exc
        if not addresses:
            raise _bad(param, f"could not resolve {host!r}")
        if not s.allow_private_addresses and not all(_public(a) for a in addresses):
            raise _bad(
                param,
                f"{url!r} resolves to a private, loopback or link-local address, which the "
                "gateway does not fetch",
            )
        # Connect to the checked address; TLS and Host still name the host.
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        target = parts._replace(netloc=f"{literal}:{port}").geturl()
        return self._client.build_request(
            "GET",
            target,
            headers={"host": parts.netloc.rsplit("@", 1)[-1]},
            extensions={"sni_hostname": host},
        )


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Could not use the URL of '{param}': {message}.", param=param)
