"""Sluice: an SLO-aware request queue and autoscaler for LLM serving.

This package holds the glue shared by every component: configuration, the
command line, the default model and the process runner.  The components
themselves live in the top-level packages ``api``, ``broker``, ``workers``,
``scaler`` and ``predictor``.
"""

__version__ = "0.1.0"
