"""Artifact registry: a directory of versions plus a CURRENT pointer file.

Layout::

    <root>/versions/<version>/{meta.json, model.safetensors, heads.json, encoder/}
    <root>/CURRENT          # one line: the version name serving should use

Publishing writes the version directory first and swaps CURRENT with os.replace, so a reader sees
either the old or the new version, never a half-written one. Replicas that do not share the
directory learn of new versions through the Redis key ``sluice:predictor:current_version``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from predictor.predictor import DEFAULT_ARTIFACT_DIR

CURRENT_VERSION_REDIS_KEY = "sluice:predictor:current_version"


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)  # settings.predictor_registry_dir in the API and the CLI

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def pointer_path(self) -> Path:
        return self.root / "CURRENT"

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / version

    def versions(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / "meta.json").exists())

    def current_version(self) -> str | None:
        try:
            version = self.pointer_path.read_text().strip()
        except FileNotFoundError:
            return None
        return version if version and (self.version_dir(version) / "meta.json").exists() else None

    def current_artifact_dir(self) -> Path:
        """The artifact serving should use; the shipped default when nothing was published."""
        version = self.current_version()
        return self.version_dir(version) if version else DEFAULT_ARTIFACT_DIR

    def set_current(self, version: str) -> None:
        if not (self.version_dir(version) / "meta.json").exists():
            raise FileNotFoundError(f"no version {version!r} under {self.versions_dir}")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.pointer_path.with_suffix(".tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, self.pointer_path)

    def publish(self, artifact_dir: str | Path, version: str, make_current: bool = True,
                redis_client=None) -> Path:
        """Copies an artifact in as `version` (unless it is already there) and optionally points at it."""
        artifact_dir = Path(artifact_dir)
        target = self.version_dir(version)
        if artifact_dir.resolve() != target.resolve():
            tmp = target.with_name(version + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(artifact_dir, tmp)
            # The registry name is the version: a loaded predictor reports it, and reload compares it.
            meta_path = tmp / "meta.json"
            meta = json.loads(meta_path.read_text())
            meta["version"] = version
            meta_path.write_text(json.dumps(meta, indent=2))
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        if make_current:
            self.set_current(version)
            if redis_client is not None:
                redis_client.set(CURRENT_VERSION_REDIS_KEY, version)
        return target
