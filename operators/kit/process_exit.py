"""An Airflow process's exit without CPython's last garbage collections over everything it still holds."""
from __future__ import annotations

import atexit
import gc
import sys


def skip_final_collections() -> None:
    """Freeze the garbage collector once the interpreter starts to exit (see `freeze_at_exit`).

    Registered once per process, by plugins/airflow_local_settings.py, which every Airflow process imports:
    the atexit handlers registered before it (Airflow's, which closes the DB connections, and logging's,
    which flushes the handlers) run after it, as before.
    """
    atexit.unregister(freeze_at_exit)
    atexit.register(freeze_at_exit)


def freeze_at_exit() -> None:
    """As it exits, CPython runs full collections while it tears the modules down, each one walking every
    object the process still holds: Airflow's heap of models, routes and pydantic schemas. Here that took
    5.4 s of CPU for the api-server, 2.4 for the scheduler and 2.1 for the triggerer, most of the 10 CPU-s
    a stop of `make up` cost (docs/performance.md). `gc.freeze()` moves every object to a generation no
    later collection walks; reference counting still releases what nothing refers to, and what only a
    cycle holds goes with the process's memory.

    Not where a nanobind extension is loaded (DuckDB's): nanobind counts its objects still alive at exit and
    prints each one as a leak, which would fill the stderr of every task that used DuckDB.
    """
    if not nanobind_loaded():
        gc.freeze()


def nanobind_loaded() -> bool:
    """True when an extension module of the process defines nanobind types or functions (and when that cannot
    be told: an exception in an atexit handler would print its traceback at every exit)."""
    try:
        for module in list(sys.modules.values()):
            if not str(getattr(module, "__file__", "") or "").endswith((".so", ".pyd")):
                continue
            for value in list(vars(module).values()):
                if "nanobind" in (getattr(type(value), "__module__", None),
                                  getattr(type(type(value)), "__module__", None)):
                    return True
    except Exception:  # noqa: BLE001 - a module with an odd namespace: exit as CPython would
        return True
    return False
