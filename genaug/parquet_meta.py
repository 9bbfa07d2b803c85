"""The `genaug` entry of a Parquet schema's metadata, parsed without importing torch.

Kept outside `genaug.data` (whose modules import torch for the image
columns) so `genaug report` reads a file's settings without waiting 1.5 s
for torch; `read_genaug_metadata`, the report and `evaluate` all parse here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from genaug.errors import GenaugError

GENAUG_KEY = b"genaug"


def genaug_metadata(schema_metadata: Mapping | None, source: str):
    """The parsed `genaug` entry of `schema_metadata` ({} if there is none); one line when it is not JSON."""
    raw = (schema_metadata or {}).get(GENAUG_KEY)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise GenaugError(f"{source} has unreadable genaug metadata") from None
