"""The panelboard client SDK: async first, with a sync facade."""

from clients.client import Client, JobHandle
from clients.errors import JobFailed, PanelboardError, ResultTimeout
from clients.sync import SyncClient

__all__ = ["Client", "JobFailed", "JobHandle", "PanelboardError", "ResultTimeout", "SyncClient"]
