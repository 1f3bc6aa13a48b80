"""Sluice autoscaler: pure scaling decisions (local batch-size AIMD and global pool sizing).

Everything under ``scaler`` except ``scaler.actuators`` and ``scaler.service`` is free of I/O:
decisions are functions of an observed-state snapshot, so the live scaler and the cluster
simulator (``scaler.sim``) run exactly the same code.
"""
