"""Benchmarks for Offload: the load generator (:mod:`benchmarks.load`) and its helpers."""

from __future__ import annotations
