"""``devstack provision``: create the AWS resources a service declares, write
their names where the app reads them, and remove them again (``--teardown``).

Runs as a Helm hook Job in the cluster, and from a laptop against any endpoint.
This module parses options and wires the parts together (I/O at the edges
only: reading the spec file, printing the report).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Final

from devstack.core.errors import ConfigError
from devstack.core.logging import configure, get_logger
from devstack.provision import engine, names, outputs, plugins, spec
from devstack.provision.aws import BotoApplier, BotoClients
from devstack.provision.hooks import run_hook
from devstack.provision.plan import ActionKind
from devstack.provision.spec import ROOT

log = get_logger("provision.command")

#: LocalStack in the cluster, installed the usual way.
DEFAULT_ENDPOINT: Final = "http://localstack.localstack.svc.cluster.local:4566"
DEFAULT_REGION: Final = "us-east-1"
_SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


EXAMPLES = """examples:
  devstack provision --spec values.yaml --release shop --endpoint http://127.0.0.1:4566
                                        create what values.yaml's devstack.aws declares
  devstack provision --spec values.yaml --release shop --owner alice --outputs-file out.env
                                        alice's copies (names prefixed alice-), outputs to a file
  devstack provision --teardown --release shop --owner alice --endpoint http://127.0.0.1:4566
                                        delete what alice's copy of shop created

The library chart's Helm hooks run it before install and upgrade and before delete;
see docs/provisioning.md.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    env = os.environ.get
    parser.add_argument(
        "--spec",
        metavar="FILE",
        help="YAML/JSON: a bare resource spec, or Helm values whose devstack.aws holds it "
        "('-' reads stdin); optional with --teardown",
    )
    parser.add_argument(
        "--release",
        default=env("DEVSTACK_RELEASE") or names.DEFAULT_RELEASE,
        help="the Helm release the resources belong to (env DEVSTACK_RELEASE; default %(default)s)",
    )
    parser.add_argument(
        "--owner",
        default=env("DEVSTACK_OWNER", ""),
        help="whose copy: empty for the baseline; an owner's resources get prefixed names "
        "(env DEVSTACK_OWNER)",
    )
    parser.add_argument(
        "--endpoint",
        default=None,
        help="AWS endpoint URL; else the spec's `endpoint`, else env AWS_ENDPOINT_URL, "
        f"else {DEFAULT_ENDPOINT}; '' means AWS itself",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="AWS region; else the spec's `region`, else env AWS_REGION / AWS_DEFAULT_REGION, "
        f"else {DEFAULT_REGION}",
    )
    parser.add_argument(
        "--namespace",
        default=env("POD_NAMESPACE"),
        help="namespace of the outputs ConfigMap/Secret (default: the pod's own)",
    )
    parser.add_argument(
        "--outputs-configmap", metavar="NAME", help="write outputs to this ConfigMap"
    )
    parser.add_argument(
        "--outputs-secret", metavar="NAME", help="write secret outputs to this Secret"
    )
    parser.add_argument(
        "--outputs-file",
        metavar="PATH",
        type=Path,
        help="write outputs to a local file (JSON, or dotenv when PATH ends in .env)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig for the outputs (outside a cluster)")
    parser.add_argument("--context", help="kubeconfig context for the outputs")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also delete what this release and owner created earlier but no longer "
        "declare (the pre-install/pre-upgrade hook); without it they are reported as stale",
    )
    parser.add_argument(
        "--teardown",
        action="store_true",
        help="delete what belongs to this release and owner (the pre-delete hook)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan only")


def resolve_endpoint(flag: str | None, in_spec: str | None, env: str | None) -> str | None:
    """The endpoint: the first of the flag, the spec, the environment and the
    in-cluster default that is set; an empty one means AWS itself (None)."""
    chosen = next(e for e in (flag, in_spec, env, DEFAULT_ENDPOINT) if e is not None)
    return chosen or None


def _read_spec(path: str | None) -> tuple[dict[str, object], Path | None]:
    if path is None:
        return {}, None
    if path == "-":
        return spec.load_document(sys.stdin.read(), source="stdin"), None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--spec {path}: {e.strerror or e}") from e
    return spec.load_document(text, source=path), p.resolve().parent


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError as e:
        raise ConfigError("--outputs-configmap/--outputs-secret need --namespace") from e


def _sink(args: argparse.Namespace) -> outputs.OutputsSink | None:
    sinks: list[outputs.OutputsSink] = []
    if args.outputs_file is not None:
        sinks.append(outputs.FileSink(args.outputs_file))
    if args.outputs_secret and not args.outputs_configmap:
        raise ConfigError("--outputs-secret needs --outputs-configmap")
    if args.outputs_configmap:
        from devstack.provision.kube import AgentKubeWriter

        sinks.append(
            outputs.KubernetesSink(
                AgentKubeWriter(kubeconfig=args.kubeconfig, context=args.context),
                namespace=_namespace(args),
                config_map=args.outputs_configmap,
                secret=args.outputs_secret,
                labels=outputs.labels(release=args.release, owner=args.owner),
            )
        )
    if not sinks:
        return None
    return sinks[0] if len(sinks) == 1 else outputs.MultiSink(sinks)


def run(args: argparse.Namespace) -> int:
    configure()
    problems = []
    if (p := names.check_owner(args.owner)) is not None:
        problems.append(f"--owner {args.owner!r}: {p}")
    if (p := names.check_release(args.release)) is not None:
        problems.append(f"--release {args.release!r}: {p}")
    if problems:
        raise ConfigError("; ".join(problems))
    if args.spec is None and not args.teardown:
        raise ConfigError("--spec FILE is required (except with --teardown)")
    if args.prune and args.teardown:
        raise ConfigError("--prune and --teardown: choose one (--teardown deletes everything)")

    raw, workdir = _read_spec(args.spec)
    loaded = plugins.load()
    loaded.require(k for k in raw if k not in spec.schema()["properties"])
    the_spec = spec.parse(raw, owner=args.owner, plugin_schemas=loaded.schemas())

    endpoint = resolve_endpoint(
        args.endpoint, the_spec.endpoint, os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        args.region
        or the_spec.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_REGION
    )
    clients = BotoClients(endpoint=endpoint, region=region)
    target = engine.Target(
        release=args.release,
        owner=args.owner,
        region=region,
        endpoint=endpoint,
        workdir=workdir,
        hook_env=clients.fallback_credentials_env(),
    )
    sink = None if args.dry_run else _sink(args)
    applier = BotoApplier(clients)
    who = f"release {args.release}, {('owner ' + args.owner) if args.owner else 'baseline'}"

    if args.teardown:
        report = engine.teardown(
            the_spec,
            target=target,
            applier=applier,
            provisioners=loaded.provisioners,
            sink=sink,
            run_hook=run_hook,
            dry_run=args.dry_run,
        )
        for line in report.lines():
            print(line)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"teardown of {who} at {endpoint}: {verb} {len(report.deleted)} resource(s)")
        return 0

    if the_spec.is_empty():
        print(f"{ROOT} declares nothing")
    result = engine.provision(
        the_spec,
        target=target,
        applier=applier,
        provisioners=loaded.provisioners,
        sink=sink,
        run_hook=run_hook,
        dry_run=args.dry_run,
        prune=args.prune,
    )
    for line in result.lines():
        print(line)
    counted = [(result.plan.count(k), k.value) for k in ActionKind]
    counted += [(len(result.pruned), "would prune" if args.dry_run else "pruned")]
    counted += [(len(result.stale), "stale")]
    counts = ", ".join(f"{n} {what}" for n, what in counted if n)
    if args.dry_run:
        print(f"plan for {who} at {endpoint}: {counts or 'nothing to do'} (dry run)")
        return 0
    print(f"provisioned {who} at {endpoint}: {counts or 'nothing declared'}")
    if result.blocked:
        print(
            f"warning: {len(result.blocked)} resource(s) differ in ways AWS cannot change in "
            "place (see cannot-update above); delete them (--teardown) and provision again "
            "to apply those changes",
            file=sys.stderr,
        )
    if sink is not None:
        print(f"outputs written to {sink.describe()}:")
    else:
        print("outputs (not written: no --outputs-file or --outputs-configmap):")
    for k, v in sorted(result.outputs.config.items()):
        print(f"  {k}={v}")
    for k in sorted(result.outputs.secret):
        print(f"  {k}=(secret)")
    return 0
