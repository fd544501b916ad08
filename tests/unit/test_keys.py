"""API keys: their making, hashing and lookup, their configuration (inline or a keys file), the
`offload keys new` command, and the refusal to serve beyond loopback without keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from gateway.config import AuthConfig, ConfigError, KeyConfig, load_config, parse_config
from gateway.keys import PREFIX, KeyRing, hash_key, new_key, presented_key
from gateway.main import exposure_problem, main
from gateway.settings import ServerSettings, Settings

MODELS = "models:\n  - {name: chat, task: chat, engine: {url: 'http://127.0.0.1:9'}}\n"


def key_entry(name: str, key: str, **extra: object) -> KeyConfig:
    return KeyConfig(name=name, hash=hash_key(key), **extra)  # type: ignore[arg-type]


def test_new_keys_are_prefixed_random_and_stored_only_as_their_sha256() -> None:
    a, b = new_key(), new_key()

    assert a.startswith(PREFIX) and len(a) >= 40 and a != b
    assert hash_key(a) == "sha256:" + hashlib.sha256(a.encode()).hexdigest()
    assert a not in hash_key(a)


def test_lookup_finds_a_key_by_its_hash_and_refuses_others() -> None:
    ring = KeyRing(
        AuthConfig(
            keys=(key_entry("alice", "ofl-a", models=("chat",)), key_entry("ops", "ofl-o", admin=True))
        )
    )

    alice = ring.lookup("ofl-a")
    assert alice is not None and alice.name == "alice" and alice.models == frozenset({"chat"})
    assert not alice.admin
    ops = ring.lookup("ofl-o")
    assert ops is not None and ops.admin and ops.models is None
    assert ring.lookup("ofl-b") is None and ring.lookup(None) is None and ring.lookup("") is None
    assert ring.enabled


def test_an_expired_key_is_refused() -> None:
    ring = KeyRing(AuthConfig(keys=(key_entry("old", "ofl-old", expires="2001-01-01T00:00:00Z"),)))

    assert ring.lookup("ofl-old") is None


def test_replacing_the_keys_revokes_the_missing_ones_at_once() -> None:
    ring = KeyRing(AuthConfig(keys=(key_entry("a", "ofl-a"), key_entry("b", "ofl-b"))))

    ring.replace(AuthConfig(keys=(key_entry("b", "ofl-b"),)))

    assert ring.lookup("ofl-a") is None and ring.lookup("ofl-b") is not None
    ring.replace(AuthConfig())
    assert not ring.enabled


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"authorization", b"Bearer ofl-x")], "ofl-x"),
        ([(b"authorization", b"bearer   ofl-x ")], "ofl-x"),
        ([(b"api-key", b"ofl-y")], "ofl-y"),
        ([(b"x-api-key", b"ofl-z")], "ofl-z"),
        ([(b"x-api-key", b"ofl-z"), (b"authorization", b"Bearer ofl-x")], "ofl-x"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], None),
        ([], None),
    ],
)
def test_the_key_is_read_from_bearer_then_api_key_headers(
    headers: list[tuple[bytes, bytes]], key: str | None
) -> None:
    assert presented_key(headers) == key


def test_admin_paths_are_guarded_and_metrics_only_when_asked() -> None:
    open_metrics = KeyRing(AuthConfig(keys=(key_entry("a", "ofl-a"),)))
    closed_metrics = KeyRing(AuthConfig(keys=(key_entry("a", "ofl-a"),), protect_metrics=True))

    assert open_metrics.guards("/admin/engines") and open_metrics.guards("/admin")
    assert not open_metrics.guards("/administrator") and not open_metrics.guards("/metrics")
    assert closed_metrics.guards("/metrics") and not closed_metrics.guards("/health")


# --- configuration ------------------------------------------------------------------------------


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


def test_keys_are_validated_with_the_bad_field_named() -> None:
    bad_hash = error_of(MODELS + "auth:\n  keys:\n    - {name: a, hash: ofl-plaintext}\n")
    assert "auth.keys.0.hash" in bad_hash

    duplicate = f"    - {{name: a, hash: '{hash_key('x')}'}}\n"
    assert "names must be unique" in error_of(MODELS + "auth:\n  keys:\n" + duplicate + duplicate)
    unknown = MODELS + f"auth:\n  keys:\n    - {{name: a, hash: '{hash_key('x')}', models: [nope]}}\n"
    assert "not configured: nope" in error_of(unknown)


def test_a_keys_file_is_read_relative_to_the_configuration_and_merged(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "keys.yaml").write_text(f"keys:\n  - {{name: b, hash: '{hash_key('ofl-b')}'}}\n")
    inline = f"  keys:\n    - {{name: a, hash: '{hash_key('ofl-a')}'}}\n"
    path = tmp_path / "offload.yaml"
    path.write_text(MODELS + "auth:\n  keys_file: secret/keys.yaml\n" + inline)

    config = load_config(path)

    assert [k.name for k in config.auth.keys] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read keys file"),
        ("keys: [{name: b, hash: nope}]\n", "keys.0.hash"),
        ("- just a list\n", "expected a mapping with only 'keys'"),
    ],
)
def test_a_bad_keys_file_stops_the_load_naming_the_problem(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "keys.yaml").write_text(content)
    path = tmp_path / "offload.yaml"
    path.write_text(MODELS + "auth:\n  keys_file: keys.yaml\n")

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path)


# --- secure by default ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_keyless_on_loopback_is_fine(host: str) -> None:
    assert exposure_problem(Settings(server=ServerSettings(host=host)), parse_config(MODELS)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "gateway.example"])
def test_keyless_beyond_loopback_is_refused_unless_asked_for(host: str) -> None:
    config = parse_config(MODELS)

    problem = exposure_problem(Settings(server=ServerSettings(host=host)), config)
    asked = exposure_problem(Settings(server=ServerSettings(host=host, allow_keyless=True)), config)

    assert problem is not None and "OFFLOAD_SERVER__ALLOW_KEYLESS" in problem
    assert asked is None


def test_keys_make_any_address_fine() -> None:
    config = parse_config(MODELS + f"auth:\n  keys:\n    - {{name: a, hash: '{hash_key('x')}'}}\n")

    assert exposure_problem(Settings(server=ServerSettings(host="0.0.0.0")), config) is None


def test_serve_refuses_to_start_keyless_on_all_interfaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "offload.yaml"
    path.write_text(MODELS)

    assert main(["serve", "--config", str(path), "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err


# --- offload keys new -----------------------------------------------------------------------------


def test_keys_new_prints_the_key_once_and_an_entry_holding_only_its_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "new", "alice", "--models", "chat,embed", "--admin"]) == 0

    out = capsys.readouterr().out
    key = next(line.strip() for line in out.splitlines() if line.strip().startswith(PREFIX))
    entry = yaml.safe_load(out[out.index("- name:") :])[0]
    assert entry == {"name": "alice", "hash": hash_key(key), "models": ["chat", "embed"], "admin": True}
    assert KeyRing(AuthConfig(keys=(KeyConfig(**entry),))).lookup(key) is not None
    assert out.count(key) == 1


def test_keys_new_sets_the_keys_limits(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "keys",
                "new",
                "batch",
                "--rpm",
                "60",
                "--tpm",
                "10000",
                "--max-concurrent",
                "4",
                "--weight",
                "3",
            ]
        )
        == 0
    )

    out = capsys.readouterr().out
    entry = yaml.safe_load(out[out.index("- name:") :])[0]
    assert (entry["rpm"], entry["tpm"], entry["max_concurrent"], entry["weight"]) == (60, 10000, 4, 3.0)


def test_keys_new_refuses_a_bad_limit_without_printing_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "batch", "--rpm", "0"]) == 2

    captured = capsys.readouterr()
    assert "rpm" in captured.err and PREFIX not in captured.out


def test_keys_new_refuses_a_bad_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "no spaces please"]) == 2
    assert "name" in capsys.readouterr().err


def test_the_example_serves_the_default_models_with_the_readme_demo_keys() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "keys.yaml"
    config = load_config(example)
    ring = KeyRing(config.auth)

    admin, embed = ring.lookup("ofl-demo-admin"), ring.lookup("ofl-demo-embed")
    assert [m.name for m in config.models] == ["smollm2", "minilm"]
    assert admin is not None and admin.admin and admin.models is None
    assert embed is not None and not embed.admin and embed.models == frozenset({"minilm"})
    assert embed.rpm == 5  # as the README says


def test_a_keys_weight_and_own_caps_reach_its_principal() -> None:
    text = MODELS + (
        "auth:\n  keys:\n"
        f"    - {{name: big, hash: '{hash_key('ofl-big')}', weight: 4, caps: {{max_tokens: 64}}}}\n"
        f"    - {{name: small, hash: '{hash_key('ofl-small')}'}}\n"
    )
    ring = KeyRing(parse_config(text).auth)

    big, small = ring.lookup("ofl-big"), ring.lookup("ofl-small")
    assert big is not None and small is not None
    assert (big.weight, big.caps is not None and big.caps.max_tokens) == (4.0, 64)
    assert (small.weight, small.caps) == (1.0, None)
    with pytest.raises(ConfigError, match="weight"):
        parse_config(MODELS + f"auth:\n  keys:\n    - {{name: z, hash: '{hash_key('z')}', weight: 0}}\n")


def test_the_start_up_line_names_every_door() -> None:
    from gateway.main import _doors

    plain = Settings(server=ServerSettings(port=8000))
    assert _doors(plain) == "http://127.0.0.1:8000/v1"
    both = Settings(server=ServerSettings(port=8000, uds=Path("/run/o.sock"), grpc_port=50051))
    assert _doors(both) == "http://127.0.0.1:8000/v1, unix:/run/o.sock, grpc://127.0.0.1:50051"
    socket_only = Settings(server=ServerSettings(tcp=False, uds=Path("/run/o.sock")))
    assert _doors(socket_only) == "unix:/run/o.sock"
