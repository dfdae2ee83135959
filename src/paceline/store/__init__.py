"""Durable job state. SQLite is the embedded default."""

from .sqlite import IngestResult, KeyUsage, Outcome, RunInfo, SQLiteStore

__all__ = ["IngestResult", "KeyUsage", "Outcome", "RunInfo", "SQLiteStore"]
