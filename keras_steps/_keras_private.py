"""Every use of Keras's private API, in one place.

Each function says why the public API does not suffice; the lead reconciles
the sections other features add.
"""

from __future__ import annotations

from typing import Any

# -- learning-rate and monitor callbacks ---------------------------------------


def metric_direction(metric: Any) -> str | None:
    """``"up"``, ``"down"`` or None: the direction a Keras metric declares.

    Keras metrics such as ``Accuracy`` or ``MeanSquaredError`` say which way
    is better in the private ``_direction`` attribute, which is what
    ``EarlyStopping``/``ModelCheckpoint``/``ReduceLROnPlateau`` read for
    ``mode="auto"``; there is no public accessor.
    """
    direction = getattr(metric, "_direction", None)
    return direction if direction in ("up", "down") else None
