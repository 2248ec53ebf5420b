"""The media fetcher (actors/_media.py): caller-named image and PDF URLs, fetched for providers
that take no URLs, without letting a caller reach the gateway's own network."""

from __future__ import annotations

import base64

import httpx
import pytest
import trio

from sluicegate.config import MediaFetchSettings
from sluicegate.errors import InvalidRequestError
from sluicegate.net._media import MediaFetcher

from .bridge_fakes import Reply, serve_loopback

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _fetcher(
    handler: httpx.MockTransport, addresses: dict[str, list[str]] | None = None, **settings: object
) -> MediaFetcher:
    async def resolve(host: str, port: int) -> list[str]:
        await trio.lowlevel.checkpoint()
        if addresses is None or host not in addresses:
            raise OSError("no such host")
        return addresses[host]

    return MediaFetcher(
        httpx.AsyncClient(transport=handler),
        MediaFetchSettings(**settings),  # type: ignore[arg-type]
        resolve,
    )


def _png_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)

    return httpx.MockTransport(handle)


def _image_item(url: str) -> dict[str, object]:
    return {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "what?"},
            {"type": "input_image", "image_url": url},
        ],
    }


async def test_https_image_becomes_a_data_url_fetched_from_the_checked_address() -> None:
    seen: list[httpx.Request] = []
    fetcher = _fetcher(_png_transport(seen), {"img.example": ["93.184.216.34"]})
    [item] = await fetcher.inline([_image_item("https://img.example/cat.png?x=1")], offset=0)
    part = item["content"][1]
    assert part["image_url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    # The connection goes to the address that was checked; TLS and Host still name the host.
    assert seen[0].url.host == "93.184.216.34"
    assert seen[0].headers["host"] == "img.example"
    assert seen[0].extensions["sni_hostname"] == "img.example"
    # Text parts and data URLs are left alone.
    assert item["content"][0] == {"type": "input_text", "text": "what?"}


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("https://127.0.0.1/x.png", None),
        ("https://10.1.2.3/x.png", None),
        ("https://169.254.169.254/latest/meta-data", None),
        ("https://[::1]/x.png", None),
        ("https://[::ffff:192.168.0.1]/x.png", None),
        # A public name that resolves to a private address (one of several is enough).
        ("https://sneaky.example/x.png", {"sneaky.example": ["93.184.216.34", "192.168.1.5"]}),
    ],
)
async def test_private_loopback_and_link_local_addresses_are_refused(
    url: str, addresses: dict[str, list[str]] | None
) -> None:
    seen: list[httpx.Request] = []
    fetcher = _fetcher(_png_transport(seen), addresses)
    with pytest.raises(InvalidRequestError) as info:
        await fetcher.inline([_image_item(url)], offset=0)
    assert info.value.param == "input[0].content[1].image_url"
    assert "private" in info.value.message
    assert seen == []  # nothing was fetched


#: (address, whether it may be fetched): both sides of each boundary of the rule in the
#: module docstring of actors/_media.py. 93.184.216.34 is public; 169.254.169.254 and
#: 100.100.100.200 are cloud metadata addresses.
_ADDRESS_RULE = [
    # Carrier-grade NAT, 100.64.0.0/10: not global, though not "private" to ipaddress either.
    ("100.63.255.255", True),
    ("100.64.0.0", False),
    ("100.100.100.200", False),
    ("100.127.255.255", False),
    ("100.128.0.0", True),
    # IPv4 multicast, which Python 3.11 calls global; reserved 240.0.0.0/4 after it.
    ("223.255.255.255", True),
    ("224.0.0.0", False),
    ("239.255.255.255", False),
    ("240.0.0.0", False),
    # 6to4, 2002::/16: judged by the IPv4 address in bits 16-48.
    ("2002:5db8:d822::1", True),
    ("2002:a9fe:a9fe::1", False),
    ("2002:643f:ffff::1", True),
    ("2002:6440::1", False),
    ("2002:c0a8:101::1", False),
    ("2003::a9fe:a9fe", True),  # past 6to4: nothing is embedded
    # NAT64, 64:ff9b::/96: judged by its last 32 bits; just outside it, and local-use NAT64
    # (64:ff9b:1::/48), nothing is globally routable.
    ("64:ff9b::5db8:d822", True),
    ("64:ff9b::a9fe:a9fe", False),
    ("64:ff9b::643f:ffff", True),
    ("64:ff9b::6440:0", False),
    ("64:ff9a:ffff:ffff:ffff:ffff:5db8:d822", False),
    ("64:ff9b::1:5db8:d822", False),
    ("64:ff9b:1::5db8:d822", False),
    # Teredo, 2001::/32, inside 2001::/23 (IETF protocol assignments): not globally routable,
    # whatever it embeds; just past 2001::/23, global unicast.
    ("2001:0:4136:e378:8000:63bf:a247:2bdd", False),
    ("2001:0:4136:e378:8000:63bf:5601:5601", False),
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2001:200::1", True),
    # IPv4-mapped, -compatible and -translated: not globally routable as IPv6 addresses.
    ("::ffff:93.184.216.34", False),
    ("::ffff:169.254.169.254", False),
    ("::93.184.216.34", False),
    ("::ffff:0:93.184.216.34", False),
    # Global unicast, 2000::/3, and what Python 3.11 calls global outside it.
    ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2000::1", True),
    ("2606:4700::1111", True),
    ("4000::1", False),
    ("fec0::1", False),
    ("ff0e::1", False),
]


@pytest.mark.parametrize(("address", "public"), _ADDRESS_RULE, ids=[a for a, _ in _ADDRESS_RULE])
async def test_only_globally_routable_addresses_are_fetched_judged_with_any_embedded_ipv4(
    address: str, public: bool
) -> None:
    """Regression: carrier-grade NAT and IPv6 addresses embedding a private IPv4 address
    (6to4, NAT64, Teredo, IPv4-mapped/-compatible) were fetched as public."""
    seen: list[httpx.Request] = []
    fetcher = _fetcher(_png_transport(seen), {"media.example": [address]})
    item = _image_item("https://media.example/x.png")
    if public:
        [fetched] = await fetcher.inline([item], offset=0)
        assert fetched["content"][1]["image_url"].startswith("data:image/png;base64,")
        assert [r.url.host for r in seen] == [address]
    else:
        with pytest.raises(InvalidRequestError, match="private") as info:
            await fetcher.inline([item], offset=0)
        assert info.value.param == "input[0].content[1].image_url"
        assert seen == []


async def test_plain_http_and_other_schemes_are_refused_by_default() -> None:
    fetcher = _fetcher(_png_transport([]), {"img.example": ["93.184.216.34"]})
    for url in ("http://img.example/a.png", "ftp://img.example/a.png", "file:///etc/passwd"):
        with pytest.raises(InvalidRequestError, match="only https"):
            await fetcher.inline([_image_item(url)], offset=0)


async def test_history_items_are_named_by_previous_response_id() -> None:
    fetcher = _fetcher(_png_transport([]))
    with pytest.raises(InvalidRequestError) as info:
        await fetcher.inline(
            [_image_item("https://10.0.0.1/a.png"), _image_item("data:,")], offset=1
        )
    assert info.value.param == "previous_response_id"


async def test_redirects_are_followed_and_each_hop_checked() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "a.example":
            return httpx.Response(302, headers={"location": "https://b.example/final.png"})
        return httpx.Response(302, headers={"location": "https://169.254.169.254/"})

    fetcher = _fetcher(
        httpx.MockTransport(handle), {"a.example": ["93.184.216.34"], "b.example": ["1.1.1.1"]}
    )
    with pytest.raises(InvalidRequestError, match="private"):
        await fetcher.inline([_image_item("https://a.example/start.png")], offset=0)


async def test_too_large_wrong_type_and_errors_are_clear_400s() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        if host == "big.example":
            return httpx.Response(200, headers={"content-type": "image/png"}, content=b"x" * 2048)
        if host == "html.example":
            return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>")
        return httpx.Response(404)

    addresses = {h: ["93.184.216.34"] for h in ("big.example", "html.example", "gone.example")}
    fetcher = _fetcher(httpx.MockTransport(handle), addresses, max_bytes=1024)
    for host, text in (("big", "larger than 1024"), ("html", "text/html"), ("gone", "HTTP 404")):
        with pytest.raises(InvalidRequestError, match=text):
            await fetcher.inline([_image_item(f"https://{host}.example/a.png")], offset=0)


async def test_a_slow_server_is_cut_at_the_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep(60)
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)

    fetcher = _fetcher(
        httpx.MockTransport(handle), {"slow.example": ["93.184.216.34"]}, timeout=5.0
    )
    start = trio.current_time()
    with pytest.raises(InvalidRequestError, match=r"longer than 5\.0 s"):
        await fetcher.inline([_image_item("https://slow.example/a.png")], offset=0)
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_pdf_file_url_becomes_file_data() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/pdf"}, content=b"%PDF-1.7")

    fetcher = _fetcher(httpx.MockTransport(handle), {"docs.example": ["93.184.216.34"]})
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_file", "file_url": "https://docs.example/papers/a.pdf"}],
    }
    [out] = await fetcher.inline([item], offset=0)
    assert out["content"] == [
        {
            "type": "input_file",
            "filename": "a.pdf",
            "file_data": "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.7").decode(),
        }
    ]


class _Image:
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        return Reply(status=200, headers={"content-type": "image/png"}, chunks=[PNG[:10], PNG[10:]])


async def test_loopback_fetch_when_private_addresses_are_allowed() -> None:
    """Over a real socket, with the settings a local deployment would use."""
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_loopback, _Image())
        async with httpx.AsyncClient() as client:
            fetcher = MediaFetcher(
                client, MediaFetchSettings(allow_http=True, allow_private_addresses=True)
            )
            data_url, name = await fetcher.fetch(f"{base}/pic.png", "p", expect="image/")
        nursery.cancel_scope.cancel()
    assert data_url == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert name == "pic.png"
