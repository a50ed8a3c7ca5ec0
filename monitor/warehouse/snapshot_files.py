"""Snapshot metadata documents and HEAD as JSON files in ``[evidence] snapshots_dir``.

Shared by the stores whose engine has no transactional catalog of its own to keep them
in: the DuckDB file store (the copies are files beside them) and the Spark store (the
copies are tables in the warehouse). Each file is written whole through a hidden
``.partial`` file and a rename, so a reader sees the old document or the new one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from monitor.warehouse.snapshot_store import RUN_ID, SnapshotError, SnapshotStore, check_run_id

__all__ = ["HEAD", "FolderDocuments", "write_atomically"]

log = logging.getLogger(__name__)

HEAD = "HEAD"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class FolderDocuments(SnapshotStore):
    """Documents ``<folder>/<run_id>.json`` and ``<folder>/HEAD``; each document's
    ``path`` is the store's :meth:`location` of its run."""

    folder: Path

    def document_path(self, run_id: str) -> Path:
        return self.folder / f"{check_run_id(run_id)}.json"

    def documents(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        found = []
        for side in self.folder.glob("*.json"):
            try:
                doc = json.loads(side.read_text(encoding="utf-8"))
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
                doc["path"] = self.location(side.stem)  # the folder may have moved
            except (OSError, ValueError, SnapshotError):
                log.warning("unreadable snapshot sidecar %s: skipped", side)
                continue
            found.append(doc)
        return found

    def document(self, run_id: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.document_path(run_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        doc["path"] = self.location(run_id)
        return doc

    def documented(self) -> set[str]:
        """Run ids with a document (readable or not)."""
        if not self.folder.is_dir():
            return set()
        return {p.stem for p in self.folder.glob("*.json") if RUN_ID.match(p.stem)}

    def write_document(self, run_id: str, doc: dict[str, Any]) -> None:
        write_atomically(self.document_path(run_id), json.dumps(doc, indent=2))

    def drop_document(self, run_id: str) -> None:
        self.document_path(run_id).unlink(missing_ok=True)

    def partial_files(self) -> list[Path]:
        """Hidden ``.partial`` files a killed write left."""
        if not self.folder.is_dir():
            return []
        return [p for p in self.folder.iterdir()
                if p.name.startswith(".") and ".partial" in p.name and p.is_file()]

    # -- HEAD -----------------------------------------------------------------------

    def read_head(self) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.folder / HEAD).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(str(exc)) from exc
        if not isinstance(doc, dict):
            raise ValueError("HEAD is not a JSON object")
        return doc

    def write_head(self, doc: dict[str, Any]) -> None:
        write_atomically(self.folder / HEAD, json.dumps(doc, indent=2))

    def forget_head(self) -> None:
        (self.folder / HEAD).unlink(missing_ok=True)
