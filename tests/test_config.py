from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.config import (
    DEFAULT_LIMIT,
    Limit,
    Signing,
    load,
    load_text,
    parse_duration,
    parse_share,
)
from watcher.errors import ConfigError
from watcher_testing.services import make_tls

ROOT = Path(__file__).resolve().parents[1]


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "shards.yaml", environ or {})
    return info.value.problems


@pytest.mark.unit
def test_example_shards_yaml_is_valid() -> None:
    config = load(ROOT / "shards.yaml", environ={})
    assert config.shards >= 1
    assert config.git.url
    assert all(r.limit in config.limits for r in config.registries)


@pytest.mark.unit
def test_minimal_config_takes_defaults() -> None:
    config = load_text("git: {url: file:///srv/gitops.git}\n", "s.yaml", {})
    assert config.shards == 16
    assert config.interval == 120
    assert config.limits[DEFAULT_LIMIT] == Limit()
    assert config.limits[DEFAULT_LIMIT].cap == 9500
    assert config.git.branches == ("environment/*",)
    assert config.git.files == ("apps/*/values.yaml", "values.yaml")
    assert config.defaults.strategy == "digest"
    assert config.server.port == 8080
    assert config.redis.url == ""
    # An unknown host gets plain v2 defaults and the default budget.
    registry = config.registry_for("quay.io")
    assert (registry.api, registry.auth, registry.insecure) == ("v2", "anonymous", False)
    assert config.limit_for(registry).name == DEFAULT_LIMIT


@pytest.mark.unit
def test_full_config() -> None:
    config = load_text(
        """
shards: 8
interval: 90s
redis: {url: "redis://r:6379/0"}
limits:
  gcr: {requests: 10000, per: 10m, headroom: 5%}
  hub: {requests: 100, per: 6h}
registries:
  - {host: "*.gcr.io", api: google, auth: google, limit: gcr}
  - host: registry.local:5000
    insecure: true
    auth: basic
    username_env: REG_USER
    password_env: REG_PASS
git:
  url: git@github.com:acme/integration.git
  branches: ["environment/*"]
  files: ["apps/*/values.yaml"]
  author: {name: bot, email: bot@acme}
defaults: {strategy: newest}
server: {port: 9090}
""",
        "s.yaml",
        {},
    )
    assert config.shards == 8 and config.interval == 90
    assert config.limits["hub"].per == 6 * 3600 and config.limits["hub"].headroom == 0.05
    assert config.registry_for("eu.gcr.io").api == "google"
    assert config.limit_for(config.registry_for("eu.gcr.io")).name == "gcr"
    assert config.registry_for("registry.local:5000").insecure is True
    assert config.git.author.name == "bot"
    assert config.defaults.strategy == "newest"
    assert config.server.port == 9090


@pytest.mark.unit
def test_environment_overrides() -> None:
    config = load_text(
        "git: {url: a}\nredis: {url: redis://x}\n",
        "s.yaml",
        {"WATCHER_GIT_URL": "file:///b", "WATCHER_REDIS_URL": "redis://y:1/0"},
    )
    assert config.git.url == "file:///b"
    assert config.redis.url == "redis://y:1/0"
    assert load_text("shards: 2\n", "s.yaml", {"WATCHER_GIT_URL": "/g"}).git.url == "/g"


@pytest.mark.unit
@pytest.mark.unit
@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("git: {url: a}\nshard: 3\n", "shards.yaml:2: shard: unknown key"),
        ("git: {url: a}\nshards: three\n", "shards.yaml:2: shards: must be an integer"),
        ("git: {url: a}\nshards: 0\n", "shards.yaml:2: shards: must be at least 1"),
        ("git: {url: a}\ninterval: 2 minutes\n", "shards.yaml:2: interval: not a duration"),
        ("git: {url: a}\ninterval: 120\n", "shards.yaml:2: interval: must be a duration"),
        (
            "git: {url: a}\nlimits:\n  g:\n    headroom: 150%\n",
            "shards.yaml:4: limits.g.headroom: percentage must be",
        ),
        (
            "git: {url: a}\nlimits:\n  g:\n    per: soon\n",
            "shards.yaml:4: limits.g.per: not a duration",
        ),
        (
            "git: {url: a}\nlimits:\n  g: {requests: 10, burst: 2}\n",
            "shards.yaml:3: limits.g.burst: unknown key",
        ),
        (
            "git: {url: a}\nregistries:\n  - host: gcr.io\n    limit: nope\n",
            "shards.yaml:4: registries[0].limit: names no budget",
        ),
        (
            "git: {url: a}\nregistries:\n  - host: gcr.io\n    api: v3\n",
            "shards.yaml:4: registries[0].api: must be one of google, v2",
        ),
        (
            "git: {url: a}\nregistries:\n  - host: gcr.io\n    insecure: yes please\n",
            "shards.yaml:4: registries[0].insecure: must be true or false",
        ),
        (
            "git: {url: a}\nregistries:\n  - api: v2\n",
            "shards.yaml:3: registries[0].host: is required",
        ),
        (
            "git: {url: a}\nregistries:\n  - host: r\n    auth: basic\n",
            "shards.yaml:3: registries[0].auth: basic needs username_env and password_env",
        ),
        (
            "git:\n  url: a\n  branches: []\n",
            "shards.yaml:3: git.branches: must be a non-empty list",
        ),
        ("git:\n  url: a\n  files: ['']\n", "shards.yaml:3: git.files: every glob must be"),
        (
            "git:\n  url: a\n  author: {name: x, mail: y}\n",
            "shards.yaml:3: git.author.mail: unknown key",
        ),
        ("shards: 2\n", "shards.yaml:1: git.url: is required"),
        (
            "git: {url: a}\ndefaults: {strategy: latest}\n",
            "shards.yaml:2: defaults.strategy: must be one of digest",
        ),
        (
            "git: {url: a}\nserver: {port: 70000}\n",
            "shards.yaml:2: server.port: must be at least 0",
        ),
        ("git: {url: a}\nregistries: {host: x}\n", "shards.yaml:2: registries: must be a list"),
        ("git: [a\n", "shards.yaml:2: (yaml):"),
    ],
)
def test_bad_config_names_file_line_and_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.unit
def test_every_problem_reported_at_once() -> None:
    found = problems("git: {url: a}\nshards: -1\ninterval: x\nbogus: 1\n")
    assert len(found) == 3


@pytest.mark.unit
def test_unquoted_off_is_the_off_strategy() -> None:
    assert (
        load_text("git: {url: a}\ndefaults: {strategy: off}\n", "s", {}).defaults.strategy == "off"
    )


@pytest.mark.unit
def test_config_is_frozen() -> None:
    config = load_text("git: {url: a}\n", "s", {})
    with pytest.raises(AttributeError):
        config.shards = 3  # type: ignore[misc]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("2m", 120), ("10m", 600), ("1h", 3600), ("500ms", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "10", "m", "-1s", "0s", "1d", "1.5.2m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.unit
def test_shares() -> None:
    assert parse_share("5%") == 0.05
    assert parse_share("0%") == 0
    for bad in ("5", "100%", "-1%", "x%"):
        with pytest.raises(ValueError):
            parse_share(bad)


@pytest.mark.integration
def test_check_command_exits_2_with_file_line_key(tmp_path: Path) -> None:
    bad = tmp_path / "shards.yaml"
    bad.write_text("git: {url: a}\nshards: many\n")
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert f"{bad}:2: shards: must be an integer" in result.stderr


@pytest.mark.integration
def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "once", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "cannot read" in result.stderr


@pytest.mark.unit
def test_every_key_a_section_reads_is_a_field_of_its_dataclass() -> None:
    """One source for every default: each converter names a field whose default it falls
    back on, and every setting an SRE can write has a converter."""
    from dataclasses import fields

    from watcher.config import loader, settings

    tables = [
        (settings.Config, loader.TOP, {"source", *loader.SECTIONS}),
        (settings.Limit, loader.LIMIT, {"name"}),
        (settings.RegistryConfig, loader.REGISTRY, set()),
        (settings.GitConfig, loader.GIT, {"author", "keys", "signing"}),
        (settings.Keys, loader.KEYS, set()),
        (settings.Author, loader.AUTHOR, set()),
        (settings.RedisConfig, loader.REDIS, set()),
        (settings.Defaults, loader.DEFAULTS, set()),
        (settings.ServerConfig, loader.SERVER, set()),
    ]
    for cls, table, elsewhere in tables:
        names = {f.name for f in fields(cls)}
        assert set(table) | elsewhere == names, cls.__name__
        for name in table:
            loader.default(cls, name)  # raises when the field has no default
    # git.signing has no defaults on purpose: both its keys are required.
    assert {f.name for f in fields(settings.Signing)} == set(loader.SIGNING)


# --- redis: the URL, the cluster and the CA, checked at load ------------------------------

SECRET = "hunter2-in-the-url"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        ('{url: "localhost:6379"}', "shards.yaml:2: redis.url: has no scheme: write redis://"),
        ('{url: "127.0.0.1"}', "shards.yaml:2: redis.url: has no scheme"),
        (f'{{url: "user:{SECRET}@redis:6379"}}', "shards.yaml:2: redis.url: has no scheme"),
        (
            f'{{url: "http://:{SECRET}@redis:6379/0"}}',
            "shards.yaml:2: redis.url: http://***@redis:6379/0: scheme must be redis://",
        ),
        ('{url: "redis://"}', "shards.yaml:2: redis.url: has no host"),
        ('{url: "redis://redis:99999/0"}', "shards.yaml:2: redis.url: bad port"),
        ('{url: "redis://redis:port/0"}', "shards.yaml:2: redis.url: bad port"),
        ('{url: "redis://redis/zero"}', "shards.yaml:2: redis.url: the database must be a number"),
        (
            '{url: "rediss://redis/0?ssl_cert_reqs=none"}',
            "shards.yaml:2: redis.url: query parameters other than ?db=N are not read",
        ),
        ('{url: "unix://"}', "shards.yaml:2: redis.url: unix:// takes an absolute socket path"),
        (
            '{url: "unix://redis/run/redis.sock"}',
            "shards.yaml:2: redis.url: unix:// takes an absolute socket path",
        ),
        ("{url: 6379}", "shards.yaml:2: redis.url: must be a string"),
        ('{url: "redis://r/0", cluster: "yes"}', "shards.yaml:2: redis.cluster: must be true"),
        (
            '{url: "unix:///run/redis.sock", cluster: true}',
            "shards.yaml:2: redis.url: a Redis Cluster is reached over TCP",
        ),
        (
            '{url: "redis://r/1", cluster: true}',
            "shards.yaml:2: redis.url: a Redis Cluster has only database 0",
        ),
        (
            '{url: "redis://r/0", ca_file: /etc/hostname}',
            "shards.yaml:2: redis.ca_file: /etc/hostname: not a PEM bundle",
        ),
        (
            '{url: "rediss://r/0", ca_file: /nonexistent/ca.pem}',
            "shards.yaml:2: redis.ca_file: /nonexistent/ca.pem: no such file",
        ),
        ("{tls: true}", "shards.yaml:2: redis.tls: unknown key (known: ca_file, cluster, url)"),
    ],
)
def test_bad_redis_settings(redis: str, expected: str) -> None:
    found = problems(f"git: {{url: a}}\nredis: {redis}\n")
    assert any(p.startswith(expected) for p in found), found
    assert all(SECRET not in p for p in found), found


@pytest.mark.unit
def test_a_ca_file_needs_a_tls_url(tmp_path: Path) -> None:
    ca = make_tls(tmp_path).ca
    text = f'git: {{url: a}}\nredis:\n  url: "redis://r:6379/0"\n  ca_file: "{ca}"\n'
    assert problems(text) == [
        "shards.yaml:4: redis.ca_file: is only read with a rediss:// URL, and redis.url is redis://"
    ]
    config = load_text(text.replace("redis://", "rediss://"), "shards.yaml", {})
    assert config.redis.ca_file == str(ca)
    assert config.redis.url == "rediss://r:6379/0"


@pytest.mark.unit
@pytest.mark.parametrize(
    "url",
    [
        "redis://redis:6379/0",
        "redis://redis",
        f"redis://:{SECRET}@redis:6379/2",
        f"redis://watcher:{SECRET}@10.0.0.3:6379/0",
        "rediss://redis.example:6380/0",
        "redis://[::1]:6379/0",
        "redis://redis:6379?db=3",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=1",
        f"unix://:{SECRET}@/run/redis/redis.sock",
    ],
)
def test_good_redis_urls(url: str) -> None:
    config = load_text(f'git: {{url: a}}\nredis: {{url: "{url}"}}\n', "s.yaml", {})
    assert config.redis.url == url
    assert config.redis.cluster is False and config.redis.ca_file == ""


@pytest.mark.unit
def test_redis_cluster_key() -> None:
    text = 'git: {url: a}\nredis: {url: "redis://node-1:6379/0", cluster: true}\n'
    assert load_text(text, "s.yaml", {}).redis.cluster is True


@pytest.mark.unit
def test_the_password_stays_out_of_the_configs_repr() -> None:
    config = load_text(f'git: {{url: a}}\nredis: {{url: "redis://:{SECRET}@r/0"}}\n', "s", {})
    assert SECRET not in repr(config)
    assert SECRET not in repr(config.redis)


@pytest.mark.unit
def test_watcher_redis_url_is_checked_and_named() -> None:
    found = problems("git: {url: a}\n", {"WATCHER_REDIS_URL": f"watcher:{SECRET}@redis:6379"})
    assert found == [
        "shards.yaml:1: redis.url (from WATCHER_REDIS_URL): has no scheme: write "
        "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"
    ]
    # The variable replaces the URL only: the file's other redis keys still apply.
    config = load_text(
        'git: {url: a}\nredis: {url: "redis://file/0", cluster: true}\n',
        "s.yaml",
        {"WATCHER_REDIS_URL": "redis://from-env:6379/0"},
    )
    assert (config.redis.url, config.redis.cluster) == ("redis://from-env:6379/0", True)
    found = problems(
        "git: {url: a}\nredis:\n  cluster: true\n", {"WATCHER_REDIS_URL": "redis://r:6379/4"}
    )
    why = "a Redis Cluster has only database 0 (/0)"
    # The file has no redis.url to point at: the redis section does.
    assert found == [f"shards.yaml:3: redis.url (from WATCHER_REDIS_URL): {why}"]


@pytest.mark.integration
def test_check_refuses_a_redis_url_without_a_scheme(tmp_path: Path) -> None:
    """It passed `watcher check` and then ended `watcher run` in a traceback."""
    bad = tmp_path / "shards.yaml"
    bad.write_text('git: {url: a}\nredis: {url: "localhost:6379"}\n')
    for command in ("check", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "watcher", command, "--config", str(bad)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        assert result.stderr.startswith(f"{bad}:2: redis.url: has no scheme")
        assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.unit
def test_git_signing() -> None:
    assert load_text("git: {url: a}\n", "s.yaml", {}).git.signing is None
    assert load_text("git: {url: a, signing: ~}\n", "s.yaml", {}).git.signing is None
    config = load_text(
        "git:\n  url: a\n  signing: {format: openpgp, key: 801CF124735C41869A8E5B0D}\n",
        "s.yaml",
        {},
    )
    assert config.git.signing == Signing("openpgp", "801CF124735C41869A8E5B0D")
    # git runs in the clone's directory: a relative key path is made absolute now.
    config = load_text("git: {url: a, signing: {format: ssh, key: keys/id}}\n", "s.yaml", {})
    assert config.git.signing == Signing("ssh", str(Path.cwd() / "keys" / "id"))
    home = load_text("git: {url: a, signing: {format: ssh, key: ~/id}}\n", "s.yaml", {})
    assert home.git.signing == Signing("ssh", str(Path.home() / "id"))


@pytest.mark.unit
def test_git_signing_problems() -> None:
    text = """\
git:
  url: a
  signing:
    format: x509
    key: /k
"""
    assert problems(text) == [
        "shards.yaml:4: git.signing.format: must be one of ssh, openpgp, not 'x509'"
    ]
    hint = "{format: ssh, key: PATH} or {format: openpgp, key: KEYID}"
    assert problems("git:\n  url: a\n  signing: {format: ssh}\n") == [
        f"shards.yaml:3: git.signing.key: is required ({hint})"
    ]
    assert problems("git:\n  url: a\n  signing: {}\n") == [
        f"shards.yaml:3: git.signing.format: is required ({hint})",
        f"shards.yaml:3: git.signing.key: is required ({hint})",
    ]
    assert problems("git:\n  url: a\n  signing: {format: ssh, key: ''}\n") == [
        "shards.yaml:3: git.signing.key: must not be empty"
    ]
    assert problems("git:\n  url: a\n  signing: ssh\n") == [
        "shards.yaml:3: git.signing: must be a mapping"
    ]
    assert problems("git:\n  url: a\n  signing: {format: ssh, key: /k, program: x}\n") == [
        "shards.yaml:3: git.signing.program: unknown key (known: format, key)"
    ]
    # An unquoted id of digits is a number to YAML; the id written is lost.
    assert problems("git:\n  url: a\n  signing:\n    format: openpgp\n    key: 12345678\n") == [
        'shards.yaml:5: git.signing.key: must be a string: quote a key id, as in key: "0x1234ABCD"'
    ]


@pytest.mark.unit
def test_git_signing_check_is_reported_at_its_line() -> None:
    seen = []

    def check(signing: Signing) -> str | None:
        seen.append(signing)
        return f"key {signing.key}: no such file"

    text = "git:\n  url: a\n  signing: {format: ssh, key: /no/key}\n"
    with pytest.raises(ConfigError) as info:
        load_text(text, "shards.yaml", {}, check_signing=check)
    assert info.value.problems == ["shards.yaml:3: git.signing: key /no/key: no such file"]
    assert seen == [Signing("ssh", "/no/key")]
    # Not called for a file whose signing keys are already wrong.
    with pytest.raises(ConfigError):
        load_text("git: {url: a, signing: {format: gpg, key: k}}\n", "s", {}, check_signing=check)
    assert len(seen) == 1
