"""The launcher's daemon: ``hermetic serve`` behind ``hermetic-launch``.

- protocol.py: the wire format and the runtime directory
  (docs/launch-protocol.md is the contract);
- peer.py: which callers may use the daemon;
- daemon.py: the daemon itself, and its control requests.
"""
