"""The built-in fake provider: an OpenAI Responses API on loopback, with scripted faults.

It answers like a real model in shape: canned text, function and custom tool calls, reasoning
items whose encrypted content only the issuing account accepts, and JSON that fits the requested
schema.

Used by the quickstart (no API keys needed), by tests (fault injection) and by benchmarks (cheap
enough not to be the bottleneck). ``python -m sluicegate.fake`` runs one from the shell.
"""

from __future__ import annotations

from ._faults import Fault as Fault
from ._server import FakeStatistics as FakeStatistics
from ._server import FakeUpstream as FakeUpstream
from ._server import RecordedRequest as RecordedRequest
from ._server import open_fake_upstream as open_fake_upstream

__all__ = [
    "FakeStatistics",
    "FakeUpstream",
    "Fault",
    "RecordedRequest",
    "open_fake_upstream",
]
