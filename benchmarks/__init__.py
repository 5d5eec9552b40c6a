"""Benchmarks for conveyor: ``make bench`` runs ``benchmarks/run.py``."""
