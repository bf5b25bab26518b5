"""Remote execution: hermetic behind the protocols of REAPI build farms.

``hermetic worker`` (worker.py) is a bot of the Remote Workers API
(``google.devtools.remoteworkers.v1test2.Bots``) that BuildGrid serves: it
takes leases, fetches each action's inputs from the farm's CAS into a local
cache (cas.py), stages the exec root (execroot.py), runs the command with
:class:`hermetic.HermeticExecutor` and uploads what it made; its protocol
messages and stubs come from ``buildgrid-common``.  ``hermetic runner``
(runner.py) serves Buildbarn's runner protocol (proto/).

This package sits above the facade: it imports hermetic's public API only.
Both need the ``remote`` extra (``pip install 'hermetic[remote]'``).
"""
