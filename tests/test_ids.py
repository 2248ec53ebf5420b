"""The resp_ ID codec: round trip, tamper-evidence, LiteLLM's unsigned IDs."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.codecs.ids import DecodedId, IdCodec
from sluicegate.errors import NotFoundError

CODEC = IdCodec.from_secret("s3cret")


def test_round_trip_and_url_safety() -> None:
    encoded = CODEC.encode(provider="openai", deployment_id="eu-1", raw_id="resp_abc", owner="k1")
    assert encoded.startswith("resp_")
    assert all(c.isalnum() or c in "-_" for c in encoded[5:])
    assert CODEC.decode(encoded) == DecodedId(
        provider="openai", deployment_id="eu-1", raw_id="resp_abc", owner="k1"
    )


@given(
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(min_size=1, max_size=80),
    st.text(max_size=40),
)
def test_round_trip_any_fields(provider: str, dep: str, raw: str, owner: str) -> None:
    encoded = CODEC.encode(provider=provider, deployment_id=dep, raw_id=raw, owner=owner)
    assert CODEC.decode(encoded) == DecodedId(
        provider=provider, deployment_id=dep, raw_id=raw, owner=owner
    )


def test_every_altered_byte_is_rejected_as_not_found() -> None:
    encoded = CODEC.encode(provider="openai", deployment_id="eu-1", raw_id="resp_abc")
    blob = bytearray(base64.urlsafe_b64decode(encoded[5:] + "=" * (-len(encoded[5:]) % 4)))
    for i in range(len(blob)):
        forged = bytearray(blob)
        forged[i] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
        with pytest.raises(NotFoundError):
            CODEC.decode("resp_" + text)


def test_another_secret_cannot_decode_and_errors_name_the_param() -> None:
    encoded = IdCodec.from_secret("other").encode(
        provider="openai", deployment_id="x", raw_id="resp_1"
    )
    with pytest.raises(NotFoundError) as info:
        CODEC.decode(encoded, param="previous_response_id")
    assert info.value.status_code == 404
    assert info.value.param == "previous_response_id"
    assert info.value.code == "previous_response_not_found"


@pytest.mark.parametrize("value", ["", "resp_", "resp_!!!", "msg_abc", "resp_AAAA", "x" * 300])
def test_garbage_is_not_found(value: str) -> None:
    with pytest.raises(NotFoundError):
        CODEC.decode(value)


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_litellm_unsigned_ids_are_accepted(urlsafe: bool, padded: bool) -> None:
    text = "litellm:custom_llm_provider:openai;model_id:dep-9;response_id:resp_upstream_1"
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(text.encode()).decode()
    if not padded:
        enc = enc.rstrip("=")
    assert CODEC.decode("resp_" + enc) == DecodedId(
        provider="openai", deployment_id="dep-9", raw_id="resp_upstream_1", signed=False
    )


def test_litellm_model_id_none_means_no_deployment() -> None:
    text = "litellm:custom_llm_provider:azure;model_id:None;response_id:resp_x"
    decoded = CODEC.decode("resp_" + base64.b64encode(text.encode()).decode())
    assert decoded.deployment_id == "" and decoded.provider == "azure"
