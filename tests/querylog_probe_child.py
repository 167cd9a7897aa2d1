"""A stand-in for the query log's writer process (tests/test_querylog.py): its first act is to
write down the CPU scheduling it was started with, then it exits without a handshake."""

import os

with open(os.environ["SAFENEST_TEST_PROBE_OUT"], "w") as out:
    out.write(f"{os.sched_getscheduler(0)} {os.getpriority(os.PRIO_PROCESS, 0)}\n")
