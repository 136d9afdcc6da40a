"""A minimal client of ``ctrlab serve`` (standard library only): post raw rows, get probabilities.

Used by the demo; handy in scripts that talk to a running server without an HTTP library.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Sequence


def predict_rows(base_url: str, rows: Sequence[Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """POST ``{"rows": rows}`` to ``base_url/v1/predict`` and return the server's JSON answer.

    ``rows``: N raw rows, each a dict keyed by column or a list in the bundle's column order
    (``None`` for a missing value). The answer holds ``probabilities`` (N floats, in row order),
    ``model_version`` and ``timing_ms``; for a multi-task bundle ``tasks`` (their names) and
    ``probabilities`` as ``{task: [N floats]}``. An HTTP error status raises ``urllib.error.HTTPError``
    (an OSError) whose body names the bad row and field."""
    request = urllib.request.Request(base_url.rstrip("/") + "/v1/predict", data=json.dumps({"rows": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())
