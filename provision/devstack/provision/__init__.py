"""devstack's provisioning engine: ``devstack provision``.

Creates the AWS resources a service declares under ``devstack.aws`` (in
LocalStack, moto or AWS), writes their names where the app reads them, and
removes what belongs to a release and owner. Pure parts (no I/O): ``spec``
(model and validation), ``names``, ``desired``, ``plan``. I/O lives in
``aws`` (the one module that talks to boto3), ``outputs`` (sinks),
``kube`` (through ``devstack.agent.kube``), ``hooks`` (user commands),
``plugins`` (entry points) and ``command``; ``engine`` orders it all.
"""
