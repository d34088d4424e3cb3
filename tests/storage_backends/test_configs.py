"""The one pool-config parser: each bad field is named, good configs come back typed.

The same tables (``config_cases``) drive the backends' own ``validate`` here and the
controller's CreatePool in ``tests/qvdc/api/test_config_agreement.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage_backends import base, ceph_rbd, configs, iscsi, local_dir, nfs
from tests.storage_backends import config_cases
from tests.storage_backends.config_cases import Case


@pytest.mark.parametrize("case", config_cases.GOOD)
def test_good_configs_parse(case: Case) -> None:
    configs.parse(case.kind, case.config)


@pytest.mark.parametrize("case", config_cases.BAD)
def test_bad_configs_name_the_field(case: Case) -> None:
    with pytest.raises(configs.ConfigError) as caught:
        configs.parse(case.kind, case.config)
    assert (caught.value.field, caught.value.reason[: len(case.reason)]) == (
        case.field,
        case.reason,
    )
    assert str(caught.value) == f"{caught.value.field} {caught.value.reason}"


def _backends(tmp_path: Path) -> dict[str, base.StorageBackend]:
    return {
        "local_dir": local_dir.LocalDirBackend(pools_root=tmp_path),
        "nfs": nfs.NfsBackend(mount_root=tmp_path),
        "ceph_rbd": ceph_rbd.CephRbdBackend(),
        "iscsi": iscsi.IscsiBackend(),
    }


@pytest.mark.parametrize("case", config_cases.GOOD + config_cases.BAD)
def test_every_backend_validates_with_the_parser(case: Case, tmp_path: Path) -> None:
    """A backend's ``validate`` says what the parser says, in the same words."""
    backend = _backends(tmp_path)[case.kind]
    spec = base.PoolSpec(pool_id="p1", kind=case.kind, config=case.config)
    if case.field is None:
        backend.validate(spec)
        return
    with pytest.raises(base.InvalidConfig) as caught:
        backend.validate(spec)
    assert str(caught.value).startswith(f"{case.field} {case.reason}")
    assert isinstance(caught.value.__cause__, configs.ConfigError)


def test_defaults_are_filled_in_where_they_do_not_depend_on_the_host() -> None:
    assert configs.parse_local_dir({}) == configs.LocalDirConfig(path="", capacity_gib=0)
    assert configs.parse_nfs({"server": "nas", "export_path": "/x", "options": "a,,b"}) == (
        configs.NfsConfig(
            server="nas", export_path="/x", version="4.1", options=("a", "b"), mount_point=""
        )
    )
    ceph = configs.parse_ceph_rbd({"pool_name": "rbd", "monitors": ["m1", "[fd00::1]:3300"]})
    assert (ceph.user, [str(m) for m in ceph.monitors]) == ("admin", ["m1:6789", "[fd00::1]:3300"])
    assert configs.parse_iscsi({"portal": "[::1]", "target": config_cases.IQN}).portal == (
        "[::1]:3260"
    )


def test_monitors_may_come_from_a_conf_file_on_the_node_only() -> None:
    configs.parse_ceph_rbd({"pool_name": "rbd"}, monitors_from_conf=True)
    with pytest.raises(configs.ConfigError, match="needs at least one monitor"):
        configs.parse("ceph_rbd", {"pool_name": "rbd"})


def test_the_chap_password_is_never_shown() -> None:
    parsed = configs.parse_iscsi(
        {**config_cases.ISCSI_OK, "chap_enabled": True, "chap_user": "u", "chap_password": "p" * 12}
    )
    assert "p" * 12 not in repr(parsed)
    with pytest.raises(configs.ConfigError) as caught:
        configs.parse_iscsi({**config_cases.ISCSI_OK, "chap_password": 123456789012})
    assert "123456789012" not in str(caught.value)


def test_a_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(configs.ConfigError, match=r"^nfs must be a message"):
        configs.parse_nfs("nas:/x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("hv-1", True),
        ("hv-1.rack2.example.com", True),
        ("A" * 63, True),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, True),  # 253 characters
        (".".join(["a" * 63] * 3) + "." + "b" * 62, False),  # 254 characters
        ("a" * 64, False),
        ("", False),
        ("hv_1", False),
        ("-hv", False),
        ("hv-", False),
        ("hv..1", False),
        ("hv-1.", False),
        ("hv 1", False),
        ("10.0.0.5", False),  # dotted numbers: an address, not a name
        ("10.0.0.256", False),
    ],
)
def test_hostname_rule(name: str, valid: bool) -> None:
    assert configs.is_hostname(name) is valid


def test_hosts_are_addresses_or_names() -> None:
    assert configs.is_host("10.0.0.5") and configs.is_host("fd00::5") and configs.is_host("nas")
    assert not configs.is_host("10.0.0.256") and not configs.is_host("nas_1")


_MIB = 1024 * 1024


def _padded(value: Any) -> Any:
    """``value`` grown by a 1 MiB tail (a list: its entries, and 1,000 more of them)."""
    if isinstance(value, str):
        return value + " " * _MIB
    if isinstance(value, list):
        return [_padded(v) for v in value] + ["x" * 1024] * 1000
    return value


@pytest.mark.parametrize("case", config_cases.BAD)
def test_an_error_never_echoes_a_huge_value(case: Case) -> None:
    # The field a bad case is refused for, grown by a megabyte: if refused, the message
    # quotes at most configs.QUOTE_MAX characters of it.
    assert case.field is not None
    key = case.field.split(".", 1)[1].split("[", 1)[0]
    config = dict(case.config)
    if key not in config or not isinstance(config[key], (str, list)):
        pytest.skip("the field is absent or not text in this case")
    config[key] = _padded(config[key])
    try:
        configs.parse(case.kind, config)
    except configs.ConfigError as error:
        assert len(str(error)) < 400, str(error)[:500]
    # Accepted (a long trailing blank can make a value valid): the API edge bounds its
    # length (tests/qvdc/api/test_request_limits.py).


@pytest.mark.parametrize("value", ["", "abc", "a" * 64, "a" * 65, "a" * _MIB, 7, ["a"] * 100_000])
def test_quote_is_repr_up_to_its_limit_then_cut_with_the_length(value: Any) -> None:
    quoted = configs.quote(value)
    text = repr(value)
    if len(text) <= configs.QUOTE_MAX:
        assert quoted == text
    else:
        assert quoted.startswith(text[: configs.QUOTE_MAX])
        assert f"({len(text)} characters)" in quoted
        assert len(quoted) < configs.QUOTE_MAX + 40
