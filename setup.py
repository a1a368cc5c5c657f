"""Only the optional C part: everything else is in setup.cfg.

pony_scheduler.keeper._spawn starts a run's process directly inside its cgroup
(clone3 CLONE_INTO_CGROUP, _spawn.c).  It is optional: where it cannot be built (no
compiler, not Linux) the install goes on and the keeper moves itself into each run's
group instead, as it does where the kernel lacks clone3.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(
        Extension(
            "pony_scheduler.keeper._spawn",
            ["pony_scheduler/keeper/_spawn.c"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
