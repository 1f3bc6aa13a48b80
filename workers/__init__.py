"""Celery workers, each owning one vLLM AsyncLLM engine.

A worker process (``sluice worker``, :func:`workers.main.run_worker`) runs these threads:

* **main** — Celery's consumer: receives messages up to the prefetch limit, runs remote-control commands
  (``sluice_set_admission_limit``) and bootsteps, and handles signals (SIGTERM: warm shutdown);
* **pool threads** (Celery's ``threads`` pool, ``max_admission_limit`` of them) — one per request held,
  each blocked in :meth:`RequestExecutor.serve <workers.execution.RequestExecutor.serve>` until its
  attempt on the engine loop is over;
* **sluice-engine-loop** — the asyncio loop: the AsyncLLM, every attempt's coroutine, the batching gate,
  the preemption watch and the asyncio Redis client (:mod:`workers.engine`);
* **sluice-heartbeat** — writes the heartbeat every ``heartbeat_interval_s`` and sweeps for dead workers.

(vLLM's engine core is a child process, not a thread.)  What they share, and what guards it:

============================================  =======================  ===========================  ==========================================
state                                         written by               read by                      guarded by
============================================  =======================  ===========================  ==========================================
``InflightRequests`` (requests held, their    pool threads, engine     pool threads, engine loop,   its one lock, ``InflightRequests._lock``
attempts on the loop, owed displacements,     loop                     heartbeat                    (never held across I/O or ``await``)
preempted-request count, aborted batches)
``Admission.limit``                           main (control command,   pool threads, engine loop,   one writer; an int, read as a whole (GIL).
                                              bootstep)                heartbeat                    A reader may see the previous limit: the
                                                                                                    next request or check sees the new one
consumer QoS (prefetch)                       main                     main                         confined to the main thread
``Admission.gate``, AsyncLLM, asyncio Redis   engine loop              engine loop                  confined to the loop; other threads go
client, ``PreemptionWatch``, ``BatchWatch``                                                         through ``EngineLoop.submit``/``call_soon``
``EngineState`` (vLLM's stats)                engine loop (stat        heartbeat                    ``EngineState.lock``
                                              logger)
``Heartbeat.draining``                        main (signal handler)    heartbeat                    one writer, a bool that only becomes True;
                                                                                                    ``Heartbeat._wake`` makes it beat at once
sync Redis clients (ledger, heartbeat)        pool threads / heartbeat                              redis-py's connection pool (thread-safe)
============================================  =======================  ===========================  ==========================================

A request's state (``sluice:req:<id>``) is written only through the request ledger (:mod:`broker.ledger`).
"""
