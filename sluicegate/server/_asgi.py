"""The app hypercorn's worker processes import (``--workers N``): the config path comes from
``SLUICEGATE_CONFIG``, set by ``sluicegate serve``."""

from __future__ import annotations

import os

from ._serve import build_app

app = build_app(os.environ["SLUICEGATE_CONFIG"])
