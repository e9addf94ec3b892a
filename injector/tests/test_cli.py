"""`meshctl kube-inject` / `kube-uninject` as users run them: real processes, files, pipes and bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MESHCTL = str(Path(sys.executable).parent / "meshctl")
GOLDEN = Path(__file__).parent / "golden"
APPS = GOLDEN / "tutorial" / "apps.yaml"
APPS_INJECTED = GOLDEN / "tutorial" / "apps.golden.yaml"


def meshctl(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHCTL, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_stdout_is_only_yaml_and_the_report_goes_to_stderr() -> None:
    run = meshctl("kube-inject", "-f", str(APPS))
    assert run.returncode == 0, run.stderr
    assert run.stdout == APPS_INJECTED.read_text()
    assert run.stderr.splitlines() == [
        'service "service-one" skipped',
        'deployment "service-one" injected',
        'service "service-two" skipped',
        'deployment "service-two" injected',
    ]


def test_process_substitution_and_stdin() -> None:
    """The tutorial's `<(meshctl kube-inject -f apps.yaml)`, read back by another process."""
    script = f'cat <({MESHCTL} kube-inject -f {APPS} 2>/dev/null) | {MESHCTL} kube-uninject -f - 2>/dev/null'
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == APPS.read_text()


def test_output_file_is_written_and_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "injected.yaml"
    out.write_text("old\n")
    out.chmod(0o600)
    run = meshctl("kube-inject", "-f", str(APPS), "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert out.read_text() == APPS_INJECTED.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["injected.yaml"], "no temp file left behind"


def test_in_place_rewrite_of_the_input(tmp_path: Path) -> None:
    path = tmp_path / "apps.yaml"
    shutil.copy(APPS, path)
    assert meshctl("kube-inject", "-f", str(path), "-o", str(path)).returncode == 0
    assert path.read_text() == APPS_INJECTED.read_text()
    assert meshctl("kube-uninject", "-f", str(path), "-o", str(path)).returncode == 0
    assert path.read_text() == APPS.read_text()


BAD_PORT = """apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    traffic.sidecar.meshbox.io/excludeInboundPorts: "99999"
spec:
  containers:
  - {name: a, image: a}
"""


@pytest.mark.parametrize(("content", "expected"), [
    # Broken YAML in the 5th document: the line counts from the top of the file.
    (APPS.read_text() + "---\nkind: Pod\nmetadata:\n  name: [broken\n", "bad.yaml:{last}:1: invalid YAML: "),
    (BAD_PORT, "bad.yaml:1: document 1: pod \"p\": annotation traffic.sidecar.meshbox.io/excludeInboundPorts="
               "'99999': not a port (1..65535): '99999'"),
])
def test_errors_exit_1_print_nothing_and_leave_the_output_file_alone(
    tmp_path: Path, content: str, expected: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    expected = expected.format(last=content.count("\n") + 1)
    out = tmp_path / "out.yaml"
    out.write_text("precious\n")
    run = meshctl("kube-inject", "-f", str(bad))
    assert run.returncode == 1
    assert run.stdout == ""
    assert f"Error: {tmp_path}/{expected}" in run.stderr
    run = meshctl("kube-inject", "-f", str(bad), "-o", str(out))
    assert run.returncode == 1
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "out.yaml"]


def test_unwritable_output_is_an_error_without_stdout(tmp_path: Path) -> None:
    run = meshctl("kube-inject", "-f", str(APPS), "-o", str(tmp_path / "missing-dir" / "out.yaml"))
    assert run.returncode == 1
    assert run.stdout == ""
    assert "cannot write" in run.stderr


def test_missing_input_file() -> None:
    run = meshctl("kube-inject", "-f", "/nonexistent/apps.yaml")
    assert run.returncode == 1
    assert "Error: /nonexistent/apps.yaml: cannot read: No such file or directory" in run.stderr


def test_flags_in_the_istioctl_style(tmp_path: Path) -> None:
    run = meshctl("kube-inject", "-f", str(GOLDEN / "kinds" / "pod.yaml"), "--hub", "quay.io/me", "--tag", "dev",
                  "--sidecarProxyUID", "4242", "--includeIPRanges", "10.0.0.0/8,192.168.0.0/16",
                  "--excludeIPRanges", "10.0.0.1/32")
    assert run.returncode == 0, run.stderr
    assert "image: quay.io/me/proxy:dev" in run.stdout
    assert "image: quay.io/me/init:dev" in run.stdout
    assert "runAsUser: 4242" in run.stdout
    assert '- -i\n    - 10.0.0.0/8,192.168.0.0/16\n    - -x\n    - 10.0.0.1/32\n' in run.stdout
    assert '- -u\n    - "4242"\n' in run.stdout


def test_empty_include_ranges_capture_no_outbound_traffic() -> None:
    """As with istioctl and meshbox-init: `--includeIPRanges ''` means no outbound capture, not all."""
    run = meshctl("kube-inject", "-f", str(GOLDEN / "kinds" / "pod.yaml"), "--includeIPRanges", "")
    assert run.returncode == 0, run.stderr
    assert '- -i\n    - ""\n' in run.stdout
    everything = meshctl("kube-inject", "-f", str(GOLDEN / "kinds" / "pod.yaml"), "--includeIPRanges", "*")
    assert "- -i\n" not in everything.stdout


@pytest.mark.parametrize(("flags", "expected"), [
    (["--includeIPRanges", "10.0.0.0/8,nope"], "includeIPRanges: not a CIDR: 'nope'"),
    (["--excludeIPRanges", "*"], "--excludeIPRanges: '*' is not allowed here"),
    (["--sidecarProxyUID", "0"], "sidecarProxyUID must be a non-root UID"),
    (["--hub", "bad hub"], "hub: not an image registry/repository prefix: 'bad hub'"),
    (["--tag", "x y"], "tag: not an image tag: 'x y'"),
    (["--meshConfigFile", "/nonexistent.yaml"], "/nonexistent.yaml: cannot read file"),
])
def test_bad_flags_are_errors_naming_the_flag(flags: list[str], expected: str) -> None:
    run = meshctl("kube-inject", "-f", str(APPS), *flags)
    assert run.returncode == 1
    assert run.stdout == ""
    assert expected in run.stderr


def test_mesh_config_sets_the_defaults_and_flags_win(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("hub: mesh.example.com/m\ntag: '7'\nports:\n  inbound_capture: 15006\n")
    run = meshctl("kube-inject", "-f", str(GOLDEN / "kinds" / "pod.yaml"), "--meshConfigFile", str(mesh),
                  "--tag", "8")
    assert run.returncode == 0, run.stderr
    assert "image: mesh.example.com/m/proxy:8" in run.stdout
    assert '- -z\n    - "15006"\n' in run.stdout
    mesh.write_text("ports:\n  outbund_capture: 1\n")
    run = meshctl("kube-inject", "-f", str(APPS), "--meshConfigFile", str(mesh))
    assert run.returncode == 1
    assert "ports.outbund_capture: no such field" in run.stderr


@pytest.mark.parametrize(("template", "expected"), [
    ("proxy:\n  image: ${registry}/p\n", "proxy.image: unknown placeholder ${registry}"),
    ("sidecar: {}\n", "sidecar: unknown key"),
    ("init: [a]\n", "init: expected a mapping"),
    ("volumes:\n- emptyDir: {}\n", "volumes[0]: expected a volume mapping with a name"),
    ("proxy:\n  name: init\n", "must have different names"),
    ("proxy: {image: [\n", "invalid YAML"),
])
def test_bad_sidecar_templates_are_errors(tmp_path: Path, template: str, expected: str) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(template)
    run = meshctl("kube-inject", "-f", str(APPS), "--injectConfigFile", str(path))
    assert run.returncode == 1
    assert run.stdout == ""
    assert str(path) in run.stderr and expected in run.stderr


def test_diff_shows_only_what_injection_changed() -> None:
    run = meshctl("kube-inject", "-f", str(GOLDEN / "rules" / "comments-and-quotes.yaml"), "--diff")
    assert run.returncode == 0, run.stderr
    changed = [line for line in run.stdout.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed and all(line.startswith("+") for line in changed), "injection only adds lines here"
    assert any("sidecar.meshbox.io/status" in line for line in changed)
    assert not any("legacy-flag" in line for line in changed)


def test_diff_and_output_together_are_a_usage_error(tmp_path: Path) -> None:
    run = meshctl("kube-inject", "-f", str(APPS), "--diff", "-o", str(tmp_path / "x"))
    assert run.returncode == 2
    assert not (tmp_path / "x").exists()


def test_verbosity_zero_is_quiet_and_two_shows_settings() -> None:
    quiet = meshctl("kube-inject", "-f", str(APPS), "--verbosity", "0")
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = meshctl("kube-inject", "-f", str(APPS), "--verbosity", "2")
    assert "init args (before pod annotations): -p 15001 -u 1337\n" in loud.stderr
    assert 'deployment "service-one" injected' in loud.stderr


def test_help_documents_the_flags() -> None:
    out = meshctl("kube-inject", "--help").stdout
    for flag in ("--meshConfigFile", "--injectConfigFile", "--hub", "--tag", "--sidecarProxyUID",
                 "--includeIPRanges", "--excludeIPRanges", "--verbosity", "--diff", "-o, --output"):
        assert flag in out
    assert "kube-inject" in meshctl("--help").stdout and "kube-uninject" in meshctl("--help").stdout


def test_stdin_and_json(tmp_path: Path) -> None:
    text = (GOLDEN / "kinds" / "pod-from-json.json").read_text()
    run = meshctl("kube-inject", "-f", "-", stdin=text)
    assert run.returncode == 0, run.stderr
    assert run.stdout == (GOLDEN / "kinds" / "pod-from-json.golden.json").read_text()
    assert run.stderr == 'pod "from-json" injected\n'
