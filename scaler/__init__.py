"""Sluice autoscaler: pure scaling decisions (local admission-limit AIMD and global pool sizing).

Everything under ``scaler`` except ``scaler.actuators``, ``scaler.service`` and ``scaler.observe.read_raw``
is free of I/O:
decisions are functions of an observed-state snapshot, so the live scaler and the cluster
simulator (``scaler.sim``) run exactly the same code.
"""
