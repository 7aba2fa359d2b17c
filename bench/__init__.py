"""Benchmarks of the product's own code paths; never imported by service/."""
