"""Kernel x_tables entries for plan rules, encoded by libxtables through python-iptables.

Building a rule with python-iptables' Rule API costs a few hundred microseconds of Python per
rule (attribute hooks that call ``dir()``, a print-and-parse round trip per module in
``Chain.append_rule``, element-by-element copies when ``Rule.rule`` assembles the entry):
that was most of the time meshbox-init spent programming a plan. ``EntryEncoder`` keeps
libxtables as the encoder: every match and target is still a python-iptables Match/Target,
filled in by the extension's own parser and passed through the extension's own final
check. What it changes:

- each distinct (extension, option, value) is encoded once per table and its bytes reused
  (a plan repeats owner matches, ports and jump targets);
- one Match object per match extension is reset and parsed again for each new value, rather
  than a new object per rule (every rule has a comment of its own);
- an entry is assembled as header + matches + target bytes, the layout libiptc takes and
  ``Rule.rule`` builds, with the two offsets set in the header.

``init/tests/compare_entries.py`` checks that every entry equals the one the Rule API builds.
"""

from __future__ import annotations

import ctypes
from typing import Any

from meshbox.init.plan import RETURN, Family, Redirect, Rule


def _checked(module: Any) -> Any:
    """Run the extension's final check (mandatory options, option combinations) on a module just parsed.

    python-iptables' public ``final_check`` first prints the module with its save function
    and parses the text again into a reset buffer, so the extension's flags describe that
    module even if another one of the same extension was parsed since. Each module here is
    checked right after it was reset and parsed, so the extension's check alone is the same
    check.
    """
    module._final_check()
    return module


class EntryEncoder:
    """Turns plan rules into libiptc entries (ctypes buffers) for one IP family's table."""

    def __init__(self, iptc: Any, family: Family) -> None:
        self._iptc = iptc
        self._new_rule = iptc.Rule if family is Family.IPV4 else iptc.Rule6
        # Modules are parsed against a TCP rule: REDIRECT accepts --to-ports only for TCP/UDP.
        self._tcp = self._new_rule()
        self._tcp.protocol = "tcp"
        self._header_size = iptc.xtables.xt_align(ctypes.sizeof(type(self._tcp.entry)))
        self._encoded: dict[tuple[str, str, str], bytes] = {}
        self._matches: dict[str, Any] = {}

    def _match(self, name: str, option: str, value: str) -> bytes:
        key = (name, option, value)
        if key not in self._encoded:
            match = self._matches.get(name)
            if match is None:
                match = self._matches[name] = self._iptc.Match(self._tcp, name)
            else:
                match.reset()  # zeroes the whole buffer and the extension's flags
            match.set_parameter(option, value)
            self._encoded[key] = bytes(_checked(match).match_buf)
        return self._encoded[key]

    def _target(self, target: str | Redirect) -> bytes:
        key = ("REDIRECT", "to-ports", str(target.to_port)) if isinstance(target, Redirect) \
            else ("standard", "", target)
        if key not in self._encoded:
            if isinstance(target, Redirect):
                module = self._iptc.Target(self._tcp, "REDIRECT")
                module.set_parameter("to-ports", str(target.to_port))
            elif target == RETURN:
                module = self._iptc.Target(self._tcp, RETURN)
            else:
                # A jump into a meshbox chain. Target(rule, chain) would look the name up as a
                # chain in every table of the family, and python-iptables instantiates each
                # table it looks at (filter, mangle, raw and security would appear in the pod).
                # The standard target carrying the chain's name is the same bytes; libiptc
                # resolves the name at commit.
                module = self._iptc.Target(self._tcp, "")
                module.standard_target = target
            module = _checked(module)
            self._encoded[key] = ctypes.string_at(ctypes.addressof(module.target), module.size)
        return self._encoded[key]

    def entry(self, rule: Rule) -> Any:
        """The rule as the buffer ``Table.append_entry`` takes (header, matches, target)."""
        header = self._new_rule()
        header.protocol = "tcp"
        if rule.destination is not None:
            header.dst = ("!" if rule.not_destination else "") + rule.destination
        if rule.out_interface is not None:
            header.out_interface = rule.out_interface
        matches = []
        if rule.dport is not None:
            matches.append(self._match("tcp", "dport", str(rule.dport)))
        if rule.uid_owner is not None:
            matches.append(self._match("owner", "uid-owner", str(rule.uid_owner)))
        if rule.gid_owner is not None:
            matches.append(self._match("owner", "gid-owner", str(rule.gid_owner)))
        matches.append(self._match("comment", "comment", rule.comment))
        target = self._target(rule.target)
        entry = header.entry
        entry.target_offset = self._header_size + sum(len(match) for match in matches)
        entry.next_offset = entry.target_offset + len(target)
        raw = b"".join([ctypes.string_at(ctypes.addressof(entry), self._header_size), *matches, target])
        return (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw)
