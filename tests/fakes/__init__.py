"""Fakes of external systems that speak the real protocol, for tests and benchmarks."""
