"""devstack's shared core: plain data, pure functions and the few helpers
that the CLI, the sidecar and the agent all use (manifest, ignore rules,
path safety, protocol conversion, errors, logging).

Modules here do no network I/O. ``manifest`` and ``scan`` read the local
filesystem; everything else is pure.
"""
