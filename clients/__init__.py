"""The panelboard client SDK: async first, with a sync facade."""

from clients.client import Client, JobHandle, unwrap
from clients.errors import JobCancelledError, JobFailed, PanelboardError, ResultTimeout
from clients.sync import SyncClient

__all__ = ["Client", "JobCancelledError", "JobFailed", "JobHandle", "PanelboardError", "ResultTimeout", "SyncClient", "unwrap"]
