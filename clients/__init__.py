"""The panelboard client SDK: async first, with a sync facade."""

from panelboard.clients.client import Client, JobHandle, unwrap
from panelboard.clients.errors import JobCancelledError, JobFailed, PanelboardError, ResultTimeout
from panelboard.clients.sync import SyncClient

__all__ = ["Client", "JobCancelledError", "JobFailed", "JobHandle", "PanelboardError", "ResultTimeout", "SyncClient", "unwrap"]
