"""The ``devstack`` command: one console script for the laptop and both
container images. Each subcommand lives in its own module and is imported
only when it runs, so ``devstack sidecar`` never loads the agent.
"""
