"""Cost estimate of a model run: compute time plus data scanned (:class:`CostConfig`).

``cost = hours × compute_per_hour × (cores or 1) + TB scanned × per_tb_scanned``; bytes
are estimated as ``rows × avg_row_bytes`` when only a row count is known.
"""

from __future__ import annotations

from monitor.core.sections import CostConfig

__all__ = ["estimate"]


def estimate(
    runtime_s: float, bytes_scanned: int | None, rows_scanned: int | None, cfg: CostConfig
) -> float:
    """Estimated cost (in ``cfg.currency``) of one run of ``runtime_s`` seconds."""
    if runtime_s < 0 or (bytes_scanned or 0) < 0 or (rows_scanned or 0) < 0:
        raise ValueError("runtime, bytes and rows must be >= 0")
    compute = runtime_s / 3600.0 * cfg.compute_per_hour * (cfg.cores or 1)
    if bytes_scanned is None and rows_scanned is not None:
        bytes_scanned = rows_scanned * cfg.avg_row_bytes
    scanned = (bytes_scanned or 0) / cfg.bytes_per_tb * cfg.per_tb_scanned
    return compute + scanned
