"""The pure parts of meshbox-init: flag parsing, the rule plan, iptables-save text, backend choice."""

from __future__ import annotations

import ipaddress

import pytest

from meshbox.api.defaults import default_mesh_config
from meshbox.api.loader import parse_mesh_config
from meshbox.init.backend import BackendError
from meshbox.init.detect import choose, ipv6_addresses
from meshbox.init.options import ALL, FlagError, FlagValues, capture_options, parse_cidrs, parse_ports
from meshbox.init.plan import IN_REDIRECT, INBOUND, OUTPUT, REDIRECT, Family, Redirect, Rule, build_plan
from meshbox.init.privileges import effective_capabilities
from meshbox.init.save_format import (
    meshbox_state,
    parse_nat_save,
    plan_state,
    quote_comment,
    render_plan,
    rule_spec,
    transition_script,
)


def _options(**flags: str):  # type: ignore[no-untyped-def]
    return capture_options(FlagValues(**flags), default_mesh_config())


def test_tutorial_flags_mean_single_port_mode() -> None:
    options = _options(outbound_port="15001", proxy_uids="1337")
    assert options.inbound_port == options.outbound_port == 15001 and options.single_port
    assert options.proxy_gids == (1337,) and options.inbound_ports == ALL and options.outbound_cidrs == ALL
    assert [p.port for p in options.own_ports] == [15001, 15000, 15020]


def test_mesh_config_split_inbound_and_flags_win_over_it() -> None:
    mesh = parse_mesh_config("ports: {inbound_capture: 15006}\nexclude_outbound_ports: [25]\n")
    assert capture_options(FlagValues(), mesh).inbound_port == 15006
    assert capture_options(FlagValues(inbound_port="15007"), mesh).inbound_port == 15007
    assert capture_options(FlagValues(), mesh).exclude_outbound_ports == (25,)
    assert capture_options(FlagValues(exclude_outbound_ports=""), mesh).exclude_outbound_ports == ()


@pytest.mark.parametrize(("flags", "flag"), [
    ({"outbound_port": "0"}, "-p"), ({"outbound_port": "15000"}, "-p"), ({"inbound_port": "15020"}, "-z"),
    ({"proxy_gids": ""}, "-g"), ({"inbound_ports": "*,80"}, "-b"), ({"exclude_outbound_cidrs": "*"}, "-x"),
])
def test_flag_errors_name_the_flag(flags: dict[str, str], flag: str) -> None:
    with pytest.raises(FlagError) as info:
        _options(**flags)
    assert info.value.flag == flag and str(info.value).startswith(f"{flag}: ")


def test_lists_parse_dedupe_and_keep_both_families() -> None:
    assert parse_ports(" 80, 81,80 ", "-o", allow_all=False) == (80, 81)
    assert parse_ports("", "-b", allow_all=True) == ()
    assert parse_cidrs("10.1.2.3/8,fd00::/8", "-i", allow_all=True) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_default_plan_layout_and_order() -> None:
    plan = build_plan(_options(), Family.IPV4)
    assert plan.chains == (INBOUND, IN_REDIRECT, OUTPUT, REDIRECT)
    assert [(r.chain, r.target) for r in plan.jumps] == [("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)]
    out = plan.rules_in(OUTPUT)
    assert [r.target for r in out] == [INBOUND, INBOUND, "RETURN", "RETURN", "RETURN", REDIRECT]
    assert out[0].uid_owner == 1337 and out[0].not_destination and out[0].destination == "127.0.0.0/8"
    assert plan.rules_in(REDIRECT)[0].target == Redirect(15001)
    assert all(rule.comment.startswith("meshbox: ") for rule in plan.rules)


def test_ipv6_plan_uses_ipv6_loopback_and_only_ipv6_cidrs() -> None:
    options = _options(outbound_cidrs="10.0.0.0/8,fd00::/8", exclude_outbound_cidrs="192.168.0.0/16")
    v6 = build_plan(options, Family.IPV6)
    assert {r.destination for r in v6.rules if r.destination} == {"::1/128", "fd00::/8"}
    v4 = build_plan(options, Family.IPV4)
    assert {r.destination for r in v4.rules if r.destination} == {"127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16"}


def test_no_inbound_capture_means_no_prerouting_jump_and_no_vip_rule() -> None:
    plan = build_plan(_options(inbound_ports=""), Family.IPV4)
    assert [r.chain for r in plan.jumps] == ["OUTPUT"]
    assert all(r.target != INBOUND for r in plan.rules_in(OUTPUT))


def test_rules_render_in_iptables_save_order() -> None:
    rule = Rule(OUTPUT, INBOUND, "meshbox: why", destination="127.0.0.0/8", not_destination=True,
                out_interface="lo", dport=80, uid_owner=1337)
    assert rule_spec(rule) == ('! -d 127.0.0.0/8 -o lo -p tcp -m tcp --dport 80 -m owner --uid-owner 1337 '
                               '-m comment --comment "meshbox: why" -j MESHBOX_INBOUND')
    redirect = Rule(REDIRECT, Redirect(15001), "x")
    assert rule_spec(redirect) == "-p tcp -m comment --comment x -j REDIRECT --to-ports 15001"
    assert quote_comment("plain-word_1") == "plain-word_1"


def test_comments_with_quotes_are_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        Rule(OUTPUT, "RETURN", "the proxy's")


def test_render_then_parse_round_trips_the_plan() -> None:
    plan = build_plan(_options(exclude_inbound_ports="22", include_outbound_ports="3306"), Family.IPV4)
    text = render_plan(plan)
    assert text.startswith("# meshbox-init plan, IPv4") and text.endswith("COMMIT\n")
    state = meshbox_state(parse_nat_save(text))
    expected = plan_state(plan)
    assert {c.name: c.specs for c in state.chains} == {c.name: c.specs for c in expected.chains}
    assert [(c, s) for c, _, s in state.jumps] == [(c, s) for c, _, s in expected.jumps]


SAVED = """# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j MESHBOX_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:OUTPUT ACCEPT [0:0]
:MESHBOX_OLD - [0:0]
:USER - [0:0]
-A PREROUTING -p udp -j RETURN
-A PREROUTING -p tcp -m comment --comment "meshbox: in" -j MESHBOX_OLD
-A OUTPUT -j USER
-A MESHBOX_OLD -p tcp -j RETURN
COMMIT
"""


def test_saved_state_and_transition_touch_only_meshbox_parts() -> None:
    state = meshbox_state(parse_nat_save(SAVED))
    assert [c.name for c in state.chains] == ["MESHBOX_OLD"]
    assert state.jumps == [("PREROUTING", 1, '-p tcp -m comment --comment "meshbox: in" -j MESHBOX_OLD')]
    removal = transition_script(state, plan_state(build_plan(_options(), Family.IPV4)))
    lines = removal.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert '-D PREROUTING -p tcp -m comment --comment "meshbox: in" -j MESHBOX_OLD' in lines
    assert lines.index("-F MESHBOX_OLD") < lines.index("-X MESHBOX_OLD")
    assert not any("USER" in line for line in lines)
    back = transition_script(meshbox_state(parse_nat_save("")), state).splitlines()
    assert '-I PREROUTING 2 -p tcp -m comment --comment "meshbox: in" -j MESHBOX_OLD' in back


@pytest.mark.parametrize(("requested", "legacy", "nft", "legacy_rules", "nft_rules", "chosen"), [
    ("auto", None, None, False, False, "legacy"),
    ("auto", None, None, False, True, "nft"),
    ("auto", None, None, True, True, "legacy"),
    ("auto", "no ip_tables in the kernel", None, False, False, "nft"),
    ("auto", None, "not installed", False, False, "legacy"),
    ("nft", "no ip_tables", None, False, False, "nft"),
])
def test_backend_choice(requested: str, legacy: str | None, nft: str | None, legacy_rules: bool,
                        nft_rules: bool, chosen: str) -> None:
    assert choose(requested, legacy, nft, legacy_rules, nft_rules) == chosen


def test_backend_choice_errors_say_why() -> None:
    with pytest.raises(BackendError, match="--backend legacy cannot work here: no ip_tables"):
        choose("legacy", "no ip_tables", None, False, False)
    with pytest.raises(BackendError, match="legacy: a; nft: b"):
        choose("auto", "a", "b", False, False)


def test_ipv6_addresses_skip_loopback_and_link_local() -> None:
    text = ("00000000000000000000000000000001 01 80 10 80       lo\n"
            "fe800000000000000000000000000001 02 40 20 80     eth0\n"
            "fd990000000000000000000000000001 02 40 00 80     eth0\n")
    assert ipv6_addresses(text) == ["fd99::1"]
    assert ipv6_addresses(text.splitlines()[0]) == []


def test_net_admin_bit_is_read_from_capeff() -> None:
    assert effective_capabilities("Name: x\nCapEff:\t0000000000001000\n") >> 12 & 1 == 1
    assert effective_capabilities("CapEff:\t0000000000000000\n") == 0
