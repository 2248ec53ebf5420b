"""The upstream transports over TLS, against loopback servers with certificates of a local CA.

LeanTransport: the certificate is verified (hostname or IP address, and the CA), the server name
goes out as SNI, ALPN offers only http/1.1, and pooling, early close and the stale-connection
retry work over TLS as they do in the clear. ``http_transport: httpx`` negotiates HTTP/2.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing
import trustme
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

import sluicegate
from sluicegate.actors._connector import Connector
from sluicegate.codecs.openai_responses import UpstreamRequest
from sluicegate.config import RouterSettings, Timeouts
from sluicegate.errors import UpstreamConnectionError
from sluicegate.fake._answers import build_response
from sluicegate.net._transport import LeanTransport  # the line to follow a move

from .test_transport import Handler, Peer, Server, keep_alive, ok, stats

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

#: The environment variables that would send the httpx transport through a proxy.
PROXY_VARIABLES = [f"{name}_proxy" for name in ("http", "https", "all", "no")]


@attrs.define(eq=False)
class TlsServer:
    """A loopback TLS server: what each handshake showed, and the server's connections."""

    server: Server
    url: str = ""
    #: The SNI server name of each handshake (None: none was sent).
    server_names: list[str | None] = attrs.Factory(list)
    #: The protocol ALPN chose in each completed handshake.
    protocols: list[str | None] = attrs.Factory(list)
    #: Handshakes the client broke off.
    refused: int = 0


async def serve_tls(
    nursery: trio.Nursery, handler: Handler, cert: trustme.LeafCert, *, host: str = "localhost"
) -> TlsServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    tls = TlsServer(Server(handler))

    def remember_server_name(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        tls.server_names.append(name)

    context.sni_callback = remember_server_name

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            tls.refused += 1
            return
        tls.protocols.append(stream.selected_alpn_protocol())
        await tls.server._handle(stream)  # Peer needs only a Stream's methods

    listeners = await nursery.start(
        functools.partial(
            trio.serve_ssl_over_tcp, handle, 0, context, host="127.0.0.1", https_compatible=True
        )
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    tls.url = f"https://{host}:{port}"
    return tls


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


async def test_certificate_of_a_trusted_ca_is_verified_and_the_server_name_sent(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    async def chunked(peer: Peer, index: int) -> None:
        while await peer.read_request() is not None:
            await peer.send(CHUNKED)

    tls = await serve_tls(nursery, chunked, ca.issue_cert("localhost"))
    transport = LeanTransport(ssl_context=trusting(ca))
    async with httpx.AsyncClient(transport=transport) as http:
        for _ in range(2):
            response = await http.get(tls.url + "/v1/models")
            assert (response.status_code, response.content) == (200, b"hello")
        stats(transport, connections_created=1, connections_reused=1, connections_idle=1)
    assert tls.server_names == ["localhost"]
    assert tls.protocols == ["http/1.1"]


async def test_ip_address_certificate_is_verified_and_no_server_name_sent(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    """RFC 6066 §3: SNI carries host names only, never an IP literal."""
    tls = await serve_tls(nursery, keep_alive, ca.issue_cert("127.0.0.1"), host="127.0.0.1")
    async with httpx.AsyncClient(transport=LeanTransport(ssl_context=trusting(ca))) as http:
        assert (await http.get(tls.url)).content == b"hello"
    assert tls.server_names == [None]


async def test_default_context_uses_the_system_trust_store_and_offers_only_http11(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an ``ssl_context`` the transport builds ``ssl.create_default_context()`` (whose
    store OpenSSL reads from SSL_CERT_FILE when it is set) with ALPN http/1.1: a server that
    prefers h2 must still answer HTTP/1.1."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    tls = await serve_tls(nursery, keep_alive, ca.issue_cert("localhost"))
    async with httpx.AsyncClient(transport=LeanTransport()) as http:
        assert (await http.get(tls.url)).content == b"hello"
    assert tls.server_names == ["localhost"]
    assert tls.protocols == ["http/1.1"]


async def refused_by_the_connector(transport: LeanTransport, url: str) -> UpstreamConnectionError:
    """The error the connector turns a refused handshake into (one attempt, no retry)."""
    connector = Connector(transport, RouterSettings())
    request = UpstreamRequest(method="GET", url=url, headers={})
    with pytest.raises(UpstreamConnectionError) as caught:
        await connector.open(request, Timeouts(), 0, read_body=True)
    assert caught.value.status_code == 502
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    return caught.value


@pytest.mark.parametrize("trust", ["another-ca", "system-store"])
async def test_certificate_of_an_untrusted_ca_is_refused(
    nursery: trio.Nursery, ca: trustme.CA, trust: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    tls = await serve_tls(nursery, keep_alive, ca.issue_cert("localhost"))
    if trust == "another-ca":
        transport = LeanTransport(ssl_context=trusting(trustme.CA()))
    else:
        transport = LeanTransport()
    error = await refused_by_the_connector(transport, tls.url)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.__cause__)
    assert "unable to get local issuer certificate" in str(error.__cause__)
    await trio.testing.wait_all_tasks_blocked()
    assert (tls.server.accepted, tls.refused) == (0, 1)
    stats(transport, connections_open=0)


@pytest.mark.parametrize(
    ("issued_for", "host", "mismatch"),
    [
        ("sluicegate.test", "localhost", "Hostname mismatch"),
        ("localhost", "127.0.0.1", "IP address mismatch"),
    ],
    ids=["hostname", "ip-address"],
)
async def test_certificate_for_another_name_is_refused(
    nursery: trio.Nursery, ca: trustme.CA, issued_for: str, host: str, mismatch: str
) -> None:
    tls = await serve_tls(nursery, keep_alive, ca.issue_cert(issued_for), host=host)
    transport = LeanTransport(ssl_context=trusting(ca))
    error = await refused_by_the_connector(transport, tls.url)
    assert mismatch in str(error.__cause__)
    await trio.testing.wait_all_tasks_blocked()
    assert (tls.server.accepted, tls.refused) == (0, 1)
    stats(transport, connections_open=0)


async def test_early_aclose_over_tls_closes_the_socket_at_once(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    """The transport closes the socket, not the TLS session (no close_notify to send, so it
    cannot block): the server must still see the client go, and nothing is pooled."""
    went_away: list[bool] = []

    async def slow_body(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst")
        went_away.append(await peer.sees_client_go_away())

    tls = await serve_tls(nursery, slow_body, ca.issue_cert("localhost"))
    transport = LeanTransport(ssl_context=trusting(ca))
    response = await transport.handle_async_request(httpx.Request("GET", tls.url))
    chunks = response.aiter_raw()
    assert await anext(chunks) == b"first"
    await chunks.aclose()  # type: ignore[attr-defined]  # an async generator
    await response.aclose()
    stats(transport, connections_open=0)
    await trio.testing.wait_all_tasks_blocked()
    assert went_away == [True]


async def test_idle_tls_connection_closed_by_the_server_is_retried_on_a_new_one(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    async def one_then_close(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(ok())

    tls = await serve_tls(nursery, one_then_close, ca.issue_cert("localhost"))
    transport = LeanTransport(ssl_context=trusting(ca))
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(tls.url)).content == b"hello"
        await trio.testing.wait_all_tasks_blocked()  # the server has closed by now
        assert (await http.post(tls.url, content=b"x")).content == b"hello"
        stats(transport, connections_created=2, connections_reused=1)
    assert tls.server.accepted == 2


# -- http_transport: httpx -----------------------------------------------------------------------


@asynccontextmanager
async def serving_h2(
    cert: trustme.LeafCert, tmp_path: Path
) -> AsyncIterator[tuple[str, list[str]]]:
    """A Responses API upstream on hypercorn over TLS (ALPN h2, http/1.1) for the body: its
    base URL and the HTTP version of each request it answered."""
    versions: list[str] = []

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        versions.append(scope["http_version"])
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            body += message["body"]
            if not message["more_body"]:
                break
        answer = build_response(
            orjson.loads(body),
            response_id="resp_h2",
            message_id="msg_h2",
            created_at=1,
            completed_at=2,
            tokens=3,
        )
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer), "more_body": False})

    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.certfile = config.keyfile = str(pem)
    config.accesslog = config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
        )
        try:
            yield binds[0], versions
        finally:
            stop.set()


async def test_httpx_transport_negotiates_http2_with_a_tls_upstream(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``http_transport: httpx`` is the HTTP/2 option: it must offer h2 and speak it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # httpx's trust store
    async with serving_h2(ca.issue_cert("127.0.0.1"), tmp_path) as (base_url, versions):
        config = {
            "model_list": [
                {
                    "model_name": "h2",
                    "litellm_params": {
                        "model": "openai/gpt-5.4",
                        "api_base": base_url + "/v1",
                        "api_key": "sk-test",
                    },
                }
            ],
            "general_settings": {"http_transport": "httpx", "store": {"path": ":memory:"}},
        }
        async with sluicegate.open_gateway(config) as gw:
            response = await gw.responses(model="h2", input="hi")
        assert response.status == sluicegate.ResponseStatus.COMPLETED
        assert versions == ["2"]
