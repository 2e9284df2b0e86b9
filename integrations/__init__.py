"""Bridges from real FL frameworks into flaudit (installed as ``flaudit.integrations``)."""
