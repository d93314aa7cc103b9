"""Integrations of surge with other libraries (``surge.integrations.transformers``)."""
