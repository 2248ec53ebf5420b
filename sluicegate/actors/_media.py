"""Fetching the images and PDFs a caller names by URL, for providers that take no URLs (Gemini).

The caller chooses the URL, so the fetch is an SSRF risk: by default only ``https``, and only
public addresses. The host is resolved here, every address it resolves to is checked, and the
connection goes to a checked address (with the original host name for TLS and ``Host``), so a
DNS answer cannot change between the check and the connection. Redirects are followed by hand,
each hop checked the same way. Size and time are bounded (``general_settings.media_fetch``).

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


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


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
