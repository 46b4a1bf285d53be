"""The sidecar: serves a workspace to ``devstack connect`` over gRPC,
applies synced changes atomically and hot-reloads the app.

Modules: ``workspace`` (the applier: filesystem I/O), ``server`` (gRPC),
``execution`` (the Exec RPC), ``reload`` (reload strategies: process I/O),
``command`` (the ``devstack sidecar`` entry point).
"""
