"""vLLM's engine core process dies with its worker, however the worker dies (SIGKILL included).

vLLM's V1 ``AsyncLLM`` runs ``EngineCore`` in a process of its own (``VLLM::EngineCore``), started with
``multiprocessing`` (``spawn`` on the CPU build, which forces it; ``fork`` by default elsewhere). vLLM
watches that process from the frontend, but nothing watches the frontend from the engine core: a worker
killed with SIGKILL left its engine core (and the executor processes the core started) running, with
their memory and cores.  vLLM offers no option for it, so Sluice wraps the engine core's process target
(``EngineCoreProc.run_engine_core``, the function vLLM's ``CoreEngineProcManager`` starts): the wrapper
is a module-level function here, so ``spawn`` pickles it by name and the child runs it, and it asks the
kernel for ``PR_SET_PDEATHSIG`` (core.processes.die_with_parent) before running vLLM's own target.  The
executor processes the engine core starts exit when it does (vLLM's death pipes).
"""

from __future__ import annotations

import os

PARENT_PID_VARIABLE = "SLUICE_ENGINE_PARENT_PID"  # the worker's pid, read by the engine core to check the race


def run_engine_core_dying_with_parent(*args, **kwargs):
    """The engine core process's target: parent-death signal first, then vLLM's own target."""
    from core.processes import die_with_parent
    from vllm.v1.engine.core import EngineCoreProc

    parent = os.environ.get(PARENT_PID_VARIABLE)
    die_with_parent(int(parent) if parent else os.getppid())
    target = EngineCoreProc.run_engine_core
    if target is run_engine_core_dying_with_parent:  # patched in this process too (a fork): the original
        target = _original
    return target(*args, **kwargs)


_original = None


def install() -> None:
    """In the worker, before the engine starts: vLLM starts its engine core with the wrapper as target."""
    global _original
    from vllm.v1.engine.core import EngineCoreProc

    if EngineCoreProc.run_engine_core is run_engine_core_dying_with_parent:
        return
    _original = EngineCoreProc.run_engine_core
    EngineCoreProc.run_engine_core = staticmethod(run_engine_core_dying_with_parent)
    os.environ[PARENT_PID_VARIABLE] = str(os.getpid())
