"""Benchmarks that print numbers (never assert them); see docs/benchmarks.md."""
