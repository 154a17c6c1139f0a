"""Preload for the embedded cluster's scheduler and nannies: exit when the parent dies.

The embedded cluster's scheduler and nannies are processes started by the user's Python
process. If that process is killed outright (SIGKILL, the OOM killer), nothing runs its
exit handlers. This preload notices that its process has been re-parented (``os.getppid()``
changes — unlike a liveness check on the old PID, this also works while the dead parent
lingers as a zombie), points stdout/stderr at /dev/null (the pipes to the dead parent are
broken, and logging into them would block the shutdown), closes the server, and exits hard
if closing takes longer than 10 s. A killed fit therefore leaves no processes behind.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

#: Set (to the parent's PID) in the environment of the embedded cluster's processes only.
ENV = "BIGNMF_PARENT_PID"


async def dask_setup(server: Any) -> None:
    parent = os.getppid()
    if int(os.environ.get(ENV, "0")) != parent:
        return  # not started directly by a bignmf process: leave it alone
    from tornado.ioloop import PeriodicCallback

    async def check() -> None:
        if os.getppid() == parent:
            return
        callback.stop()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        asyncio.get_running_loop().call_later(10, os._exit, 0)
        try:
            await server.close()
        finally:
            os._exit(0)

    callback = PeriodicCallback(check, 1000)
    callback.start()
