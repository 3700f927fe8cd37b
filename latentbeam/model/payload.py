"""The original row of a dead letter as bounded JSON (`payload`); never raises."""
from __future__ import annotations

import json
import math

import pyarrow as pa

from latentbeam.text import clip

# Dead-letter payloads longer than this are replaced by a JSON object with their head.
MAX_PAYLOAD_CHARS = 16384


def row_payload(batch: pa.RecordBatch | pa.Table, row: int) -> str:
    """The original row as JSON (NaN/inf written as strings, bytes as hex); never raises.

    A value Python cannot represent (a timestamp past year 9999, a date beyond
    datetime's range) is written as Arrow's text form of it; a payload longer than
    MAX_PAYLOAD_CHARS becomes {"truncated": true, "chars": N, "head": "<first chars>"}.
    """
    try:
        try:
            record = batch.slice(row, 1).to_pylist()[0]
        except Exception:  # noqa: BLE001  (OverflowError, ValueError, ...: per column below)
            record = {name: _safe_value(batch.column(i), row)
                      for i, name in enumerate(batch.schema.names)}
        if _has_nonfinite(record):
            record = _clean(record)
        text = json.dumps(record, default=_json_default, ensure_ascii=False)
    except Exception as e:  # noqa: BLE001  a dead letter must still be written
        text = json.dumps({"unrepresentable": clip(f"{type(e).__name__}: {e}", 400)})
    if len(text) > MAX_PAYLOAD_CHARS:
        text = json.dumps({"truncated": True, "chars": len(text),
                           "head": text[:MAX_PAYLOAD_CHARS]}, ensure_ascii=False)
    return text


def _safe_value(column, row: int):
    """One cell as a Python value, else as Arrow's text form, else a placeholder."""
    cell = column.slice(row, 1)
    try:
        return cell.to_pylist()[0]
    except Exception:  # noqa: BLE001
        pass
    try:
        return cell.cast(pa.string()).to_pylist()[0]
    except Exception:  # noqa: BLE001
        return f"<{clip(column.type, 60)} value not representable>"


def _has_nonfinite(obj) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_nonfinite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_nonfinite(v) for v in obj)
    return False


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _json_default(obj):
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)
