"""Environments lram generates data in and evaluates on (simulators without a maintained package)."""
