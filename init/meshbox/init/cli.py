"""meshbox-init: the init container's entry point. Flags → rule plan → one transaction.

Flag names follow istio-iptables, so `meshbox-init -p 15001 -u 1337` (the 2017 tutorial's
init arguments) works as written: without -z, inbound TCP is redirected to the -p port too.
Exit status: 0 done, 1 cannot program the tables (privileges, kernel, backend), 2 bad flags
or mesh config (nothing changed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from meshbox.api.defaults import default_mesh_config
from meshbox.api.v1 import mesh_config_pb2
from meshbox.api.validation import ValidationError
from meshbox.init import detect
from meshbox.init.backend import Backend, BackendError, run
from meshbox.init.options import ALL, CaptureOptions, FlagError, FlagValues, capture_options
from meshbox.init.plan import Family, TablePlan, build_plan
from meshbox.init.privileges import has_net_admin
from meshbox.init.save_format import render_plan

IPV6_MODES = ("auto", "on", "off")


def _fail(message: str) -> None:
    click.echo(f"meshbox-init: {message}", err=True)
    sys.exit(1)


def _mesh(mesh_config: str | None) -> mesh_config_pb2.MeshConfig:
    """The mesh config file's settings over the defaults, or the defaults alone."""
    if mesh_config is None:
        return default_mesh_config()
    # The YAML loader is imported only when there is a file to read: it is a large share of
    # the start-up time of an init container that runs with the defaults.
    from meshbox.api.loader import ConfigError, load_mesh_config

    try:
        return load_mesh_config(mesh_config)
    except (ConfigError, ValidationError) as exc:
        raise click.UsageError(f"--mesh-config: {exc}") from None


def _options(mesh_config: str | None, flags: FlagValues) -> CaptureOptions:
    mesh = _mesh(mesh_config)
    try:
        return capture_options(flags, mesh)
    except FlagError as exc:
        raise click.UsageError(str(exc)) from None


def _families(ipv6: str) -> list[Family]:
    if ipv6 == "on" or (ipv6 == "auto" and detect.pod_has_ipv6()):
        return [Family.IPV4, Family.IPV6]
    return [Family.IPV4]


def _describe(options: CaptureOptions) -> str:
    inbound = ("off" if not options.captures_inbound
               else f"port {options.inbound_port}" + (" (single-port mode, same as outbound)"
                                                      if options.single_port else ""))
    outbound = "off" if options.outbound_cidrs != ALL and not options.outbound_cidrs \
        and not options.include_outbound_ports else f"port {options.outbound_port}"
    return (f"outbound TCP -> {outbound}; inbound TCP -> {inbound}; "
            f"proxy uid {','.join(map(str, options.proxy_uids))} gid {','.join(map(str, options.proxy_gids))}")


def _apply(backend: Backend, plans: Sequence[TablePlan]) -> None:
    for plan in plans:
        reason = backend.unavailable(plan.family)
        if reason is not None:
            _fail(f"the pod has {plan.family.value} but the {backend.name} backend cannot program it: {reason}")
    outcome = run(backend, [(plan.family, plan) for plan in plans])
    for plan in plans:
        state = "programmed" if plan.family in outcome.changed else "already in place"
        click.echo(f"meshbox-init: {plan.family.value}: {len(plan.rules)} rules {state} "
                   f"({backend.name} backend)")
        # The rules go to the log too: `kubectl logs <pod> -c init` shows what the pod runs with.
        click.echo(render_plan(plan), nl=False)


def _cleanup(requested: str) -> None:
    names = ["legacy", "nft"] if requested == "auto" else [requested]
    removed = False
    for name in names:
        backend = detect.make(name)
        if requested != "auto" and (reason := backend.unavailable(Family.IPV4)) is not None:
            _fail(f"--backend {name} cannot work here: {reason}")
        families = [family for family in Family if backend.in_use(family)]
        if not families:
            continue
        outcome = run(backend, [(family, None) for family in families])
        for family in outcome.changed:
            removed = True
            click.echo(f"meshbox-init: {family.value}: meshbox rules removed ({name} backend)")
    if not removed:
        click.echo("meshbox-init: no meshbox rules found; nothing changed")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "outbound_port", metavar="PORT",
              help="Outbound capture port: the app's outgoing TCP is redirected here. [mesh config: 15001]")
@click.option("-z", "inbound_port", metavar="PORT",
              help="Inbound capture port. Without it inbound TCP goes to the -p port too (single-port mode, "
                   "the 2017 layout) unless the mesh config sets ports.inbound_capture (e.g. 15006).")
@click.option("-u", "proxy_uids", metavar="UIDS",
              help="Comma-separated UIDs of the proxy; their traffic is never redirected. [mesh config: 1337]")
@click.option("-g", "proxy_gids", metavar="GIDS",
              help="Comma-separated GIDs of the proxy; their traffic is never redirected. [mesh config: 1337]")
@click.option("-b", "inbound_ports", metavar="PORTS",
              help="Inbound ports to capture: '*' (all, the default), a comma-separated list, or '' (none).")
@click.option("-d", "exclude_inbound_ports", metavar="PORTS",
              help="Inbound ports never captured (with -b '*'). The sidecar's own ports never are anyway.")
@click.option("-i", "outbound_cidrs", metavar="CIDRS",
              help="Outbound destinations to capture: '*' (all, the default), comma-separated CIDRs, or ''.")
@click.option("-x", "exclude_outbound_cidrs", metavar="CIDRS",
              help="Outbound destination CIDRs never captured.")
@click.option("-o", "exclude_outbound_ports", metavar="PORTS", help="Outbound destination ports never captured.")
@click.option("-q", "include_outbound_ports", metavar="PORTS",
              help="Outbound destination ports always captured, whatever -i and -x say.")
@click.option("--mesh-config", type=click.Path(dir_okay=False), default=None,
              help="Mesh config YAML giving the defaults of the flags above (ports, UID/GID, CIDR and port lists).")
@click.option("--backend", type=click.Choice(detect.BACKENDS), default="auto", show_default=True,
              help="legacy = x_tables via python-iptables; nft = iptables-nft-restore; auto = legacy unless "
                   "only nft works or nft already holds rules here.")
@click.option("--ipv6", type=click.Choice(IPV6_MODES), default="auto", show_default=True,
              help="Program ip6tables too: auto = when the pod has a global IPv6 address.")
@click.option("--dry-run", is_flag=True, help="Print the rule plan in iptables-save format and change nothing.")
@click.option("--cleanup", is_flag=True,
              help="Remove every chain and rule meshbox added (and nothing else), then exit.")
def main(outbound_port: str | None, inbound_port: str | None, proxy_uids: str | None, proxy_gids: str | None,
         inbound_ports: str | None, exclude_inbound_ports: str | None, outbound_cidrs: str | None,
         exclude_outbound_cidrs: str | None, exclude_outbound_ports: str | None,
         include_outbound_ports: str | None, mesh_config: str | None, backend: str, ipv6: str,
         dry_run: bool, cleanup: bool) -> None:
    """Redirect the pod's TCP through the meshbox sidecar with iptables (nat table, MESHBOX_* chains).

    Outbound TCP from any UID but the proxy's goes to the -p port; inbound TCP to the pod goes to
    the -z port (or -p). Traffic over lo stays local, except the proxy reaching its own pod IP
    through a Service VIP, which is sent to the inbound side. Applied all or nothing; running it
    again gives the same rules.
    """
    flags = FlagValues(outbound_port, inbound_port, proxy_uids, proxy_gids, inbound_ports,
                       exclude_inbound_ports, outbound_cidrs, exclude_outbound_cidrs, exclude_outbound_ports,
                       include_outbound_ports)
    if cleanup and dry_run:
        raise click.UsageError("--cleanup and --dry-run cannot be combined")
    options = None if cleanup else _options(mesh_config, flags)
    if options is not None and dry_run:
        for family in _families(ipv6):
            click.echo(render_plan(build_plan(options, family)), nl=False)
        return
    if not has_net_admin():
        _fail("needs root or the NET_ADMIN capability to program iptables (give the init container NET_ADMIN)")
    try:
        if options is None:
            _cleanup(backend)
            return
        click.echo(f"meshbox-init: {_describe(options)}")
        _apply(detect.detect_backend(backend), [build_plan(options, family) for family in _families(ipv6)])
    except BackendError as exc:
        _fail(f"error: {exc}")
