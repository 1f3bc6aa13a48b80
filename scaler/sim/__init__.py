"""Discrete-time cluster simulator that drives the real scaling policies and local autoscaler."""
