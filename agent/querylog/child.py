"""``python -m agent.querylog.child FD_IN FD_OUT``: the query log's writer process.

QueryLog starts it with a clean interpreter (none of the DNS process's index, caches or
threads) and the two pipes' descriptors; agent/querylog/writer.py has the work and the
protocol. A module of its own, so that ``-m`` does not run writer.py a second time as
``__main__`` (the package imports it).
"""

import sys

from .writer import main

sys.exit(main())
