"""AWS Batch's job statuses, and the groups of them that the kit, the run view and the local endpoint use.

A job goes SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED or FAILED; an array job's
`arrayProperties.statusSummary` counts its children by the same words. This module imports nothing, so the
local endpoint (`localaws.batch`) takes its words from here too.
"""
from __future__ import annotations

SUBMITTED = "SUBMITTED"
PENDING = "PENDING"
RUNNABLE = "RUNNABLE"
STARTING = "STARTING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"

#: Every status, in the order a job goes through them.
STATUSES = (SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED)
#: A job in one of these has ended and changes no more.
ENDED = (SUCCEEDED, FAILED)
#: A job in one of these has not ended yet (the provider's `BatchClientHook.INTERMEDIATE_STATES`).
ACTIVE = (SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING)
#: Not started yet: waiting for its dependencies or for a place to run.
WAITING = (SUBMITTED, PENDING, RUNNABLE)
#: Started, now or before: a child in one of these has had a place to run.
STARTED = (STARTING, RUNNING, SUCCEEDED, FAILED)
