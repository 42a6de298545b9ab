"""Benchmarks of orthosae-plugin (not tests: they print and save numbers, assert nothing).

``python -m benchmarks.speed`` runs the speed, memory and approximation benchmarks.
"""
