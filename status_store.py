"""Where each request's status lives: `store_from_url` and the store names a caller needs.

The stores themselves live in `mailservice.stores`; this module keeps the name deployments and
scripts import them by.
"""

from mailservice.stores import STORE_BACKENDS, store_from_url
from mailservice.stores.contract import EmailStatus, IdempotencyClaim, StatusRecord, StatusStore
from mailservice.stores.memory_store import MemoryStatusStore

__all__ = [
    "STORE_BACKENDS",
    "EmailStatus",
    "IdempotencyClaim",
    "MemoryStatusStore",
    "StatusRecord",
    "StatusStore",
    "store_from_url",
]
