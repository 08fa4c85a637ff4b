"""SQL analysis for the cache: statement kind, fingerprint, tables, cacheability.

``analyze(sql, dialect)`` parses a SQL string once (with sqlglot) and returns an
immutable :class:`Analysis`; :class:`Analyzer` holds user settings and a memo.
"""

from querycache.analysis.analyzer import DIALECTS, Analyzer, analyze
from querycache.analysis.fingerprint import fingerprint_id
from querycache.analysis.model import ALL, Analysis

__all__ = ["ALL", "DIALECTS", "Analysis", "Analyzer", "analyze", "fingerprint_id"]
