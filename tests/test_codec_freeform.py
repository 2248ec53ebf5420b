"""The input of a custom tool decoded from the function arguments a bridged provider streams
(``sluicegate/codecs/_freeform.py``): split anywhere, escapes and surrogate pairs cut in half,
arguments arriving whole, and arguments that are not the expected shape."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.codecs._freeform import FreeformInput


def _decode(pieces: list[str]) -> tuple[list[str], str]:
    """What each piece streamed, and the whole input."""
    decoder = FreeformInput()
    streamed = [decoder.feed(piece) for piece in pieces]
    return streamed, decoder.close()


def _split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _check(arguments: str, expected: str, cuts: list[int]) -> None:
    streamed, whole = _decode(_split(arguments, cuts))
    assert whole == expected
    assert "".join(streamed) == expected
    # What has streamed is a prefix of the input at every step: nothing is ever taken back.
    done = ""
    for piece in streamed:
        done += piece
        assert expected.startswith(done)


#: JSON encodings a provider may use for the arguments.
_ENCODINGS = [
    lambda s: json.dumps({"input": s}),  # \uXXXX escapes, surrogate pairs for astral characters
    lambda s: json.dumps({"input": s}, ensure_ascii=False),
    lambda s: orjson.dumps({"input": s}).decode(),
    lambda s: json.dumps({"input": s}, indent=2),
    lambda s: '  {  "input" :\n"' + json.dumps(s)[1:-1] + '"\t}\n',
]


@settings(max_examples=300)
@given(
    text=st.text(),
    encoding=st.sampled_from(range(len(_ENCODINGS))),
    data=st.data(),
)
def test_any_string_split_anywhere_decodes_exactly(
    text: str, encoding: int, data: st.DataObject
) -> None:
    arguments = _ENCODINGS[encoding](text)
    cuts = data.draw(st.lists(st.integers(0, len(arguments)), max_size=12))
    _check(arguments, text, cuts)


@settings(max_examples=100)
@given(text=st.text(alphabet=st.characters(codec="utf-8")), data=st.data())
def test_astral_and_escaped_text_one_character_at_a_time(text: str, data: st.DataObject) -> None:
    arguments = json.dumps({"input": text + '\U0001f600\n"\\/'})
    _check(arguments, text + '\U0001f600\n"\\/', list(range(len(arguments))))


_ESCAPES = r'{"input": "a\"b\\c\/d\b\f\n\r\t \u00e9 \ud83d\ude00 \u20ac"}'
_DECODED = 'a"b\\c/d\b\f\n\r\t \u00e9 \U0001f600 \u20ac'


@pytest.mark.parametrize("cut", range(len(_ESCAPES) + 1))
def test_every_escape_split_at_every_boundary(cut: int) -> None:
    _check(_ESCAPES, _DECODED, [cut])


def test_arguments_whole_and_byte_by_byte() -> None:
    _check(_ESCAPES, _DECODED, [])
    _check(_ESCAPES, _DECODED, list(range(len(_ESCAPES))))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (r'{"input": "\ud83d"}', "\ufffd"),  # a high half alone, at the end
        (r'{"input": "\ud83dx"}', "\ufffdx"),  # ... before a character
        (r'{"input": "\ud83d\n"}', "\ufffd\n"),  # ... before another escape
        (r'{"input": "\ud83d\u0041"}', "\ufffdA"),  # ... before a non-surrogate \u escape
        (r'{"input": "\ud83d\ud83d\ude00"}', "\ufffd\U0001f600"),  # ... before a pair
        (r'{"input": "\ude00"}', "\ufffd"),  # a low half alone
        (r'{"input": "\uZZ"}', "\\uZZ"),  # not an escape: kept as written
        (r'{"input": "\q"}', "\\q"),
    ],
)
def test_what_json_forbids_in_a_string_still_decodes(arguments: str, expected: str) -> None:
    for cut in range(len(arguments) + 1):
        _check(arguments, expected, [cut])
    _, whole = _decode([arguments])
    whole.encode()  # valid UTF-8: no surrogate reaches an event


@pytest.mark.parametrize(
    ("arguments", "expected", "streams"),
    [
        # Cut off inside the string (a stream that hit its token limit): what was decoded.
        ('{"input": "partial te', "partial te", True),
        ('{"input": "partial\\u00', "partial", True),
        ('{"input": "partial\\', "partial", True),
        # More after the string: the string.
        ('{"input": "x", "extra": 1}', "x", True),
        # Nothing or an empty object: an empty input.
        ("", "", False),
        ("  ", "", False),
        ("{}", "", False),
        # The input string not first: found in the whole object, streamed at the end.
        ('{"note": "n", "input": "later"}', "later", False),
        # Not the function's schema: the argument text as it came.
        ('{"text": "hello"}', '{"text": "hello"}', False),
        ('{"input": 42}', '{"input": 42}', False),
        ('"just a string"', '"just a string"', False),
        ("not json at all", "not json at all", False),
        ('{"input', '{"input', False),
    ],
)
def test_arguments_not_of_the_expected_shape(arguments: str, expected: str, streams: bool) -> None:
    streamed, whole = _decode([arguments])
    assert whole == expected
    assert ("".join(streamed) == expected) is (streams or expected == "")
    assert expected.startswith("".join(streamed))


def test_an_escaped_key_is_still_the_input_key() -> None:
    _check('{"\\u0069nput": "yes"}', "yes", [3])
    assert _decode(['{"in\\"put": "no"}']) == ([""], '{"in\\"put": "no"}')


def test_text_after_the_object_is_ignored() -> None:
    streamed, whole = _decode(['{"input": "a"}', ' {"input": "b"}'])
    assert (streamed, whole) == (["a", ""], "a")
