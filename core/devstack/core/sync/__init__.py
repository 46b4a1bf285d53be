"""The sync engine's pure core: values and decisions, no I/O.

``devstack connect`` (``devstack.cli``) and the sidecar
(``devstack.sidecar``) are thin I/O shells around these modules; none of
them imports grpc, aiohttp, kubernetes or boto3 (an import-linter contract
in ``.importlinter`` holds them to it), and each is tested with tables
(``tests/core/test_sync_*.py``).

- ``model``: the vocabulary. ``OpKind`` (the one name of an operation's
  kind: the planner's changes, the client's batches and the applier all use
  it), ``Reason`` (why an op was not applied: a conflict or a refusal, with
  the coarser string older peers read and a fix for a person),
  ``StagedOp`` (one op as the sidecar received it, immutable), ``Outcome``
  (what one op did), ``RefusedError`` (a refusal found on the disk).
- ``conflict``: the conflict rule, written once and used by both sides:
  ``conflict(deed, entry, state, ...)`` says why sync may not remove,
  overwrite, replace or move a workspace entry; ``unexpected`` whether the
  workspace holds what the laptop expected.
- ``decide``: what the sidecar does with one op given what the workspace
  holds: apply, adopt what is identical, forget what is gone, a conflict
  with its reason, or a refusal with its reason.
- ``batching``: which of the planner's changes go in which batch, and how
  each one's content travels (inline, chunked, as a delta).
- ``acks``: what the sidecar's acknowledgement of a batch means for the
  laptop's picture of the workspace, and what the person is told.
- ``retry``: what a failed session means (try again after a delay, or give
  up with one line) and the backoff schedule.
- ``wire``: the one place these enums meet the protocol's
  (``devstack.sync.v1``): ``OpKind`` and ``pb.OpKind``, ``Reason`` and
  ``pb.ProblemReason``.

The planner (``devstack.core.plan``) and the manifest scanner
(``devstack.core.manifest``) are the laptop's side of the same core.
"""
