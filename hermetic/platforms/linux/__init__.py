"""The Linux backend: namespaces, a tmpfs root, pivot_root, cgroups, seccomp, Landlock.

``prepare(spec)`` decides and marshals once what every action of a spec
shares (prepared.py); ``execute(prepared, argv, ...)`` adds the command,
clones the sandbox's pid 1 and collects the result (run.py).  The other
modules are one concern each: the op list (plan.py), its C memory
(memory.py), the prepared mount namespace (template.py), standbys
(standby.py), limits (limits.py, watch.py, workers.py), network namespaces
(netns.py), Landlock (landlock.py), the host probe (probe.py), reaping
(reap.py), setup errors (setup_errors.py) and limit violations
(violations.py).
"""

from hermetic.platforms.linux.prepared import Prepared, prepare
from hermetic.platforms.linux.probe import capabilities
from hermetic.platforms.linux.run import execute

__all__ = ["BACKEND", "Prepared", "capabilities", "execute", "prepare"]

BACKEND = "linux-namespaces"
