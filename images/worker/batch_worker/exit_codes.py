"""The worker's exit codes and the failure class each one means, for the worker and for the operator that reads them.

Exit codes tell AWS Batch's retry strategy what to do (`config/batch_resources.json`):

    0   every batch of the slice is done
    75  EX_TEMPFAIL: a transient error (I/O, network, throttling): Batch retries the child, and
        the retry skips the batches that are already done
    65  EX_DATAERR: a batch is unusable (`BadData`, or an output that breaks the declared schema):
        retrying cannot help, so Batch does not
    64  EX_USAGE: the worker cannot run (class `config`): the worklist is unreadable, names an unknown
        workload or parameter, or was planned for another workload version. Nothing is retried; the
        child logs "cannot run: ..." as its first error
    77  EX_NOPERM: the store refused a read or write (permission denied, read-only, S3 AccessDenied):
        not retried; someone has to grant access first
    1   the workload raised an unexpected error (a bug): not retried either

`batch-worker try` exits with the same codes (0, 1, 64, 65).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 64
EXIT_BAD_DATA = 65
EXIT_TRANSIENT = 75
EXIT_NO_PERMISSION = 77
#: The failure class of a worker that cannot run at all (EXIT_USAGE).
CONFIG_CLASS = "config"
#: The failure class of a child that exited with this code without recording its batches; the operator counts
#: any other code (a kill, a lost host, a timeout) as "lost".
EXIT_CLASSES = {EXIT_ERROR: "error", EXIT_USAGE: CONFIG_CLASS, EXIT_BAD_DATA: "bad_data", EXIT_TRANSIENT: "transient",
                EXIT_NO_PERMISSION: "permission_denied"}
