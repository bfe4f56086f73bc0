from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.config import DEFAULT_LIMIT, Limit, load, load_text, parse_duration, parse_share
from watcher.errors import ConfigError

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
        (settings.GitConfig, loader.GIT, {"author"}),
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
