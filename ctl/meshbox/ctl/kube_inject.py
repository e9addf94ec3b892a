"""`meshctl kube-inject` and `meshctl kube-uninject`: sidecar injection for manifest files.

Only YAML (or JSON, for JSON input) goes to stdout; the per-resource report goes to stderr. With
``-o FILE`` the file is replaced atomically, and left untouched on any error.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meshbox.api.files import write_atomically
from meshbox.api.loader import ConfigError, load_mesh_config
from meshbox.api.validation import ValidationError
from meshbox.injector.inject import InjectSettings
from meshbox.injector.manifest import ManifestError, ManifestResult, inject_manifest, uninject_manifest
from meshbox.injector.settings import SettingsError, load_template
from meshbox.injector.sidecar import init_args


def read_input(filename: str) -> tuple[str, str]:
    """The manifest text and a name for messages; ``-`` is stdin."""
    try:
        if filename == "-":
            return sys.stdin.buffer.read().decode("utf-8"), "<stdin>"
        return Path(filename).read_bytes().decode("utf-8"), filename
    except OSError as exc:
        raise click.ClickException(f"{filename}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{filename}: not UTF-8 text (byte {exc.start})") from None


def write_output(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permissions; a clear error on failure."""
    try:
        write_atomically(Path(path), text.encode())
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot write: {exc.strerror}") from None


def _emit(result: ManifestResult, original: str, source: str, output: str | None, diff: bool, verbosity: int,
          verb: str) -> None:
    if verbosity >= 1:
        for line in result.reports:
            click.echo(line, err=True)
    if diff:
        lines = difflib.unified_diff(
            original.splitlines(keepends=True),
            result.text.splitlines(keepends=True),
            fromfile=source,
            tofile=f"{source} ({verb})",
        )
        click.echo("".join(lines), nl=False)
    elif output is not None:
        write_output(output, result.text)
    else:
        click.echo(result.text, nl=False)


def _run(transform: Callable[[str, str], ManifestResult], filename: str, output: str | None, diff: bool,
         verbosity: int, verb: str) -> None:
    if diff and output is not None:
        raise click.UsageError("--diff prints to stdout; it cannot be combined with -o")
    text, source = read_input(filename)
    try:
        result = transform(text, source)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    _emit(result, text, source, output, diff, verbosity, verb)


def build_settings(mesh_config: str | None, inject_config: str | None, **flags: Any) -> InjectSettings:
    """Settings from the mesh config file, the sidecar template and the flags given (flags win)."""
    try:
        mesh = load_mesh_config(mesh_config)
        overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
        for key in ("include_ip_ranges", "exclude_ip_ranges"):
            if key in overrides:
                flag = "--includeIPRanges" if key.startswith("include") else "--excludeIPRanges"
                overrides[key] = InjectSettings.parse_ranges(overrides[key], flag, allow_wildcard=key.startswith("i"))
        if inject_config is not None:
            overrides["template"] = load_template(inject_config)
        return InjectSettings.from_mesh_config(mesh, **overrides)
    except (ConfigError, ValidationError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


_COMMON = [
    click.option("-f", "--filename", required=True, metavar="FILE|-", help="Manifest to read (- for stdin)."),
    click.option("-o", "--output", metavar="FILE", help="Write FILE atomically instead of stdout."),
    click.option("--diff", is_flag=True, help="Print a unified diff of what changed instead of the manifest."),
    click.option("--verbosity", type=click.IntRange(0, 2), default=1, show_default=True,
                 help="Report on stderr: 0 errors only, 1 one line per resource and warnings, 2 also the settings."),
]


def _common(func: Any) -> Any:
    for option in reversed(_COMMON):
        func = option(func)
    return func


@click.command("kube-inject")
@_common
@click.option("--meshConfigFile", "mesh_config", metavar="FILE",
              help="meshbox mesh config YAML; sets the defaults of every flag below.")
@click.option("--injectConfigFile", "inject_config", metavar="FILE",
              help="Sidecar template YAML overriding the injected containers (see docs/injector.md).")
@click.option("--hub", help="Registry of the init and proxy images [mesh config hub, docker.io/meshbox].")
@click.option("--tag", help="Tag of the init and proxy images [mesh config tag].")
@click.option("--sidecarProxyUID", "proxy_uid", type=int, metavar="UID",
              help="UID the proxy runs as; its traffic is never captured [1337].")
@click.option("--includeIPRanges", "include_ip_ranges", metavar="CIDRS",
              help="Comma-separated outbound CIDRs to capture; * for all, '' for none [all].")
@click.option("--excludeIPRanges", "exclude_ip_ranges", metavar="CIDRS",
              help="Comma-separated outbound CIDRs never captured.")
def kube_inject(filename: str, output: str | None, diff: bool, verbosity: int, mesh_config: str | None,
                inject_config: str | None, hub: str | None, tag: str | None, proxy_uid: int | None,
                include_ip_ranges: str | None, exclude_ip_ranges: str | None) -> None:
    """Add meshbox's init and proxy containers to the workloads of a manifest.

    Works on Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers,
    Jobs, CronJobs, DeploymentConfigs and Lists of them; everything else passes through as
    written. Injecting again is a no-op (or replaces an outdated sidecar). On any error nothing
    is written and the exit code is 1.

    \b
    kubectl apply -f <(meshctl kube-inject -f apps.yaml)
    """
    settings = build_settings(mesh_config, inject_config, hub=hub, tag=tag, proxy_uid=proxy_uid,
                              include_ip_ranges=include_ip_ranges, exclude_ip_ranges=exclude_ip_ranges)
    if verbosity >= 2:
        click.echo(f"images: {settings.hub}/init:{settings.tag}, {settings.hub}/proxy:{settings.tag}", err=True)
        click.echo(f"init args (before pod annotations): {' '.join(init_args(settings, {}))}", err=True)
        click.echo(f"discovery: {settings.discovery_address}; sidecar template: {inject_config or 'built-in'}",
                   err=True)
    _run(lambda text, source: inject_manifest(text, settings, source=source), filename, output, diff, verbosity,
         "injected")


@click.command("kube-uninject")
@_common
def kube_uninject(filename: str, output: str | None, diff: bool, verbosity: int) -> None:
    """Remove exactly what kube-inject added (found through the sidecar.meshbox.io/status annotation)."""
    _run(lambda text, source: uninject_manifest(text, source=source), filename, output, diff, verbosity,
         "uninjected")
