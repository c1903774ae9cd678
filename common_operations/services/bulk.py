"""Files and options of built-in import/export tasks: upload and download URLs, object clean-up.

Called by :class:`~common_operations.services.tasks.TaskService`; the storage backend and the
entity declarations come from configuration.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from common_operations.config import StorageSettings
from common_operations.domain.bulk import CONTENT_TYPES, export_options, format_of, import_options
from common_operations.domain.entities import EntitySpec, parse_filters
from common_operations.domain.errors import NotAvailable, PayloadTooLarge, UnknownEntityType, ValidationFailed
from common_operations.domain.files import input_key, sanitize_file_name, task_prefix
from common_operations.domain.task import CreateTask, Task
from common_operations.domain.workflow_types import HandlerKind
from common_operations.infra.storage.base import SignedUrl, Storage

# What GetDownloadUrl may ask for.
DOWNLOADABLE = ("output", "result", "input")


@dataclass(frozen=True, slots=True)
class PreparedFiles:
    """What a new bulk task stores about its files, and the upload URL for its input."""

    files: dict[str, Any]
    upload: SignedUrl | None = None


class BulkService:
    """Checks bulk tasks' options and hands out signed URLs for their files."""

    def __init__(
        self, storage: Storage, settings: StorageSettings, entities: Mapping[str, EntitySpec]
    ) -> None:
        """Serve files from ``storage`` for the entities declared in ``entities``."""
        self.storage = storage
        self.settings = settings
        self.entities = entities

    def entity(self, name: str) -> EntitySpec:
        """The declared entity ``name``.

        Raises:
            UnknownEntityType: it is not declared (the message lists the declared ones).
        """
        entity = self.entities.get(name)
        if entity is None:
            allowed = sorted(self.entities)
            raise UnknownEntityType(
                f"unknown entityType {name!r}; declared: {', '.join(allowed) or 'none'}",
                field="entityType",
                allowed=allowed,
            )
        return entity

    def prepare(self, kind: HandlerKind, task_id: uuid.UUID, cmd: CreateTask) -> PreparedFiles:
        """Validate a new bulk task's options; for an import, where its file goes.

        Raises:
            ValidationFailed: an option, the entity type or a filter is invalid; an import has
                no ``fileName``.
            PayloadTooLarge: the announced ``fileSize`` is over the upload limit.
        """
        entity = self.entity(cmd.entity_type)
        if kind is HandlerKind.EXPORT:
            opts = export_options(cmd.params)
            parse_filters(entity, opts.filters)
            return PreparedFiles(files={})
        opts_in = import_options(cmd.params, cmd.file_name)
        if opts_in.source_task_id and not cmd.file_name:
            return PreparedFiles(files={})
        if not cmd.file_name:
            raise ValidationFailed("an import needs the fileName of the file it imports", field="fileName")
        name = sanitize_file_name(cmd.file_name)
        fmt = opts_in.format or format_of(name)
        if fmt is None:
            raise ValidationFailed(
                f"cannot tell the format of {name!r}: name a .csv, .xlsx or .jsonl file or set params.format",
                field="fileName",
            )
        limit = self.settings.max_upload_bytes
        if cmd.file_size is not None and cmd.file_size > limit:
            raise PayloadTooLarge(
                f"fileSize {cmd.file_size} is over the upload limit of {limit} bytes",
                field="fileSize",
                limit=limit,
            )
        key = input_key(str(task_id))
        content_type = CONTENT_TYPES[fmt]
        upload = self.storage.presign_upload(
            key,
            expires=timedelta(seconds=self.settings.upload_url_ttl),
            max_size=limit,
            content_type=None,
        )
        files = {
            "input": {
                "key": key,
                "name": name,
                "size": cmd.file_size,
                "contentType": cmd.content_type or content_type,
                "format": fmt,
                "maxSize": limit,
                "uploadExpiresAt": upload.expires_at.isoformat(),
            }
        }
        return PreparedFiles(files=files, upload=upload)

    def download(self, task: Task, which: str) -> SignedUrl:
        """A signed download URL of the task's ``which`` file (output, result or input).

        Raises:
            ValidationFailed: ``which`` is none of those.
            NotAvailable: the task has no such file (yet).
        """
        if which not in DOWNLOADABLE:
            raise ValidationFailed(
                f"file must be one of {', '.join(DOWNLOADABLE)}; got {which!r}", field="file"
            )
        ref = task.files.get(which)
        if not isinstance(ref, dict) or not ref.get("key"):
            what = {
                "output": "an output file",
                "result": "a row-level result file",
                "input": "an input file",
            }[which]
            raise NotAvailable(
                f"task {task.id} has no {what} (status {task.status.value})", id=str(task.id), file=which
            )
        name = sanitize_file_name(str(ref.get("name") or f"{task.id}-{which}"))
        return self.storage.presign_download(
            str(ref["key"]),
            expires=timedelta(seconds=self.settings.download_url_ttl),
            download_name=name,
            content_type=ref.get("contentType"),
        )

    async def delete_files(self, task_id: uuid.UUID) -> int:
        """Delete every stored object of a task; how many."""
        return await asyncio.to_thread(self.storage.delete_prefix, task_prefix(str(task_id)))


__all__ = ["DOWNLOADABLE", "BulkService", "PreparedFiles"]
