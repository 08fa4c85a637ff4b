"""Invalidation: table versions, transaction tracking, cross-process messages."""
