"""Names every component shares: SLO classes (lanes), worker pools, the Celery task and control command."""

from __future__ import annotations

# SLO classes, one Redis lane each; this order is also the default lane priority.
SLO_CLASSES: tuple[str, ...] = ("interactive", "batch")
LANES = SLO_CLASSES

# Worker pools (Chiron) and the lanes their workers consume, in priority order.
POOL_LANES: dict[str, tuple[str, ...]] = {
    "interactive": ("interactive",),
    "batch": ("batch",),
    "mixed": ("interactive", "batch"),
}
POOLS: tuple[str, ...] = ("interactive", "batch", "mixed")

# The one Celery task: one generation request.
TASK_NAME = "sluice.generate"

# The Celery control command that moves a worker's admission limit at run time.
SET_ADMISSION_LIMIT = "sluice_set_admission_limit"
