"""The cluster agent: reconciles Traefik IngressRoutes and Middlewares so a
request tagged with an engineer's routing key reaches their personal copies.

Pure parts (no I/O): :mod:`.desired` (Services -> desired objects) and
:mod:`.plan` (desired vs actual -> writes), :mod:`.metrics`. I/O shell:
:mod:`.kube` (the one module that talks to kubernetes-asyncio),
:mod:`.informer`, :mod:`.writer`, :mod:`.leader`, :mod:`.controller`,
:mod:`.api`, :mod:`.service`; :mod:`.command` is ``devstack agent``.
"""
