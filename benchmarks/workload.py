"""The watched estate: environments, applications, image blocks, and the builds pushed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from watcher_testing.emulator import GoogleRegistryEmulator

NEWEST_PATTERN = "fixes_TECH-.*"
ENV_NAMES = ["b2c", "b2b", "int", "qa", "perf", "demo", "ops", "data", "mob", "pay", "api"]


@dataclass(frozen=True)
class Block:
    key: str  # dotted key path of the block in its values file
    image: str  # repository path on the registry, e.g. proj/dev-images/app3
    tag: str
    strategy: str = "digest"  # digest | newest


@dataclass
class Workload:
    """Branches -> application -> blocks. Every branch is one environment."""

    branches: dict[str, dict[str, list[Block]]] = field(default_factory=dict)
    # Extra tags each image carries (history, branch builds): listing size as in real life.
    history: int = 10

    @property
    def images(self) -> list[str]:
        return sorted(
            {b.image for apps in self.branches.values() for bs in apps.values() for b in bs}
        )

    @property
    def block_count(self) -> int:
        return sum(len(bs) for apps in self.branches.values() for bs in apps.values())

    def blocks(self) -> list[tuple[str, str, Block]]:
        return [
            (branch, app, block)
            for branch, apps in self.branches.items()
            for app, blocks in apps.items()
            for block in blocks
        ]

    def newest_images(self) -> list[str]:
        return sorted({b.image for _, _, b in self.blocks() if b.strategy == "newest"})

    def digest_targets(self) -> list[tuple[str, str]]:
        return sorted({(b.image, b.tag) for _, _, b in self.blocks() if b.strategy == "digest"})


def reference(environments: int = 11, apps: int = 55, newest_envs: int = 2) -> Workload:
    """The reference setup: N environments x M applications, some images shared.

    - apps ``app0..app{M-1}``; the last ``M//6`` are workers running the image of
      ``app0..`` (one image, two applications);
    - a shared sidecar (``proj/shared/cloudsql-proxy:stable``) in every fifth
      application, and ``proj/shared/nginx:stable`` in every eleventh;
    - on the first ``newest_envs`` environments, three applications follow their
      developers' branch builds (``newest`` on ``fixes_TECH-.*``).
    """
    workers = max(1, apps // 6)
    load = Workload()
    for e in range(environments):
        branch = f"environment/{ENV_NAMES[e % len(ENV_NAMES)]}{e // len(ENV_NAMES) + 1}"
        branch_apps: dict[str, list[Block]] = {}
        for a in range(apps):
            owner = a - (apps - workers) if a >= apps - workers else a
            strategy = "newest" if e < newest_envs and a in (20, 21, 22) else "digest"
            blocks = [Block("image", f"proj/dev-images/app{owner}", "master", strategy)]
            if a % 5 == 0:
                blocks.append(Block("proxy.image", "proj/shared/cloudsql-proxy", "stable"))
            if a % 11 == 3:
                blocks.append(Block("web.image", "proj/shared/nginx", "stable"))
            branch_apps[f"app{a}"] = blocks
        load.branches[branch] = branch_apps
    return load


def scale(images: int = 2000, environments: int = 20, apps: int = 500) -> Workload:
    """Many images and branches: each application file holds three image blocks.

    Environment ``e`` runs applications whose images are drawn from a window of the
    image set shifted by ``e``, so every image is used somewhere and environments
    overlap in most of their images, as real ones do.
    """
    load = Workload(history=3)
    per_env = 3 * apps
    for e in range(environments):
        branch = f"environment/env{e:02d}"
        branch_apps: dict[str, list[Block]] = {}
        offset = (e * (images - per_env)) // max(1, environments - 1) if images > per_env else 0
        for a in range(apps):
            keys = ("image", "worker.image", "migrations.image")
            blocks = [
                Block(key, f"proj/scale/img{(offset + 3 * a + k) % images:04d}", "master")
                for k, key in enumerate(keys)
            ]
            branch_apps[f"app{a:03d}"] = blocks
        load.branches[branch] = branch_apps
    return load


def flat(images: int, environments: int = 2) -> Workload:
    """One application per image, every environment the same (the saturation set)."""
    load = Workload(history=0)
    for e in range(environments):
        load.branches[f"environment/e{e}"] = {
            f"app{i}": [Block("image", f"proj/flat/app{i}", "master")] for i in range(images)
        }
    return load


# --- the registry side -----------------------------------------------------------------


@dataclass
class RegistryState:
    """What is pushed: per image, followed tag -> digest, and newest branch-build tag."""

    digests: dict[tuple[str, str], str] = field(default_factory=dict)
    newest: dict[str, str] = field(default_factory=dict)
    counter: int = 0


def seed_registry(emu: GoogleRegistryEmulator, load: Workload, rng: random.Random) -> RegistryState:
    state = RegistryState()
    old = datetime.now(UTC) - timedelta(days=30)
    newest = set(load.newest_images())
    for image in load.images:
        for n in range(load.history):
            moment = old + timedelta(hours=n)
            emu.push(image, f"build-{n}", created=moment, uploaded=moment)
        if image in newest:
            for n in range(5):
                moment = old + timedelta(days=1, hours=n)
                tag = f"fixes_TECH-{1000 + n}-{rng.getrandbits(28):07x}"
                emu.push(image, tag, created=moment, uploaded=moment)
                state.newest[image] = tag
    for image, tag in load.digest_targets():
        state.digests[(image, tag)] = emu.push(image, tag, created=old, uploaded=old)
    return state


def push_build(
    emu: GoogleRegistryEmulator, state: RegistryState, image: str, kind: str, rng: random.Random
) -> tuple[str, str]:
    """Push one build; returns (the followed tag or pattern, the value blocks must get)."""
    state.counter += 1
    if kind == "newest":
        tag = f"fixes_TECH-{2000 + state.counter}-{rng.getrandbits(28):07x}"
        emu.push(image, tag)
        state.newest[image] = tag
        return NEWEST_PATTERN, tag
    followed = next(t for (i, t) in sorted(state.digests) if i == image)
    digest = emu.push(image, followed)
    state.digests[(image, followed)] = digest
    return followed, digest


def render(host: str, app: str, branch: str, blocks: list[Block], state: RegistryState) -> str:
    """One values file, with every block already at what the registry holds."""
    lines = [f"# {app} on {branch}", "replicaCount: 2"]
    for block in blocks:
        parts = block.key.split(".")
        indent = ""
        for part in parts:
            lines.append(f"{indent}{part}:")
            indent += "  "
        lines.append(f"{indent}repository: {host}/{block.image}")
        lines.append(f"{indent}tag: {block.tag}")
        if block.strategy == "newest":
            lines.append(f"{indent}overrideTag: {state.newest[block.image]}")
            lines.append(f"{indent}watch:")
            lines.append(f"{indent}  strategy: newest")
            lines.append(f"{indent}  tags: '{NEWEST_PATTERN}'")
        else:
            lines.append(f"{indent}shasum: {state.digests[(block.image, block.tag)]}")
        lines.append(f"{indent}pullPolicy: IfNotPresent")
    return "\n".join(lines) + "\n"


def files(host: str, load: Workload, state: RegistryState) -> dict[str, dict[str, str]]:
    return {
        branch: {
            f"apps/{app}/values.yaml": render(host, app, branch, blocks, state)
            for app, blocks in apps.items()
        }
        for branch, apps in load.branches.items()
    }
