"""The ground floor every Sluice component stands on: settings, Redis clients, the key schema and names.

Nothing here imports a component (``api``, ``broker``, ``workers``, ``scaler``, ``predictor``) or the
command line; the layering contract in ``pyproject.toml`` keeps it that way.
"""
