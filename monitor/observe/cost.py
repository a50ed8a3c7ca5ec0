"""Cost estimate of a model run: compute time plus data scanned.

``cost = compute_hours × compute_per_hour × (cores or 1) + TB_scanned × per_tb_scanned``

* ``cores`` unset: ``compute_per_hour`` is the price of the whole warehouse per hour.
  ``cores`` set: ``compute_per_hour`` is per core-hour and is multiplied by ``cores``.
* TB is decimal (``bytes_per_tb = 10**12``); set ``bytes_per_tb = 1099511627776`` for
  TiB-priced warehouses.
* When only a row count is known, bytes scanned are estimated as
  ``rows × avg_row_bytes`` (default 200 bytes, a typical narrow fact row). When neither
  is known, only compute is charged. A known byte count always wins over rows.
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
