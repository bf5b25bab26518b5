"""Remote execution: hermetic as a worker of a REAPI build farm.

``hermetic worker`` (hermetic/remote/worker.py) is a bot of the Remote
Workers API (``google.devtools.remoteworkers.v1test2.Bots``) that BuildGrid
serves: it takes leases, fetches each action's inputs from the farm's CAS
into a local cache (cas.py), stages the exec root (execroot.py), runs the
command with :class:`hermetic.HermeticExecutor` and uploads what it made.

This package sits above the facade: it imports hermetic's public API only.
It needs the ``remote`` extra (``pip install 'hermetic[remote]'``): the
protocol messages and stubs come from ``buildgrid-common``.
"""
