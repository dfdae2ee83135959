"""A source whose files are chosen when a run starts: uploaded from the web page, or given
with ``paceline run JOBFILE --input FILE``.

>>> job = pl.Job("accounts", source=pl.Upload(format="csv", id="account_id"),
...              sink=pl.SQLiteSink("out.db", table="accounts"))   # doctest: +SKIP

Every file given to the job goes into its *inbox*, ``.paceline/uploads/<job>/`` beside the
job file, and stays there: the inbox is append-only, and the source reads its files one
after the other as one stream. So the position the store commits stays true when another
file arrives: a new run reads only the files it has not read yet, ids already in the store
(done or not) are not run twice (they count as duplicates), and a file given twice (same
bytes) is kept once, so ``paceline run JOBFILE --input FILE`` can be repeated to continue.

A file is checked while it streams in (its size against a limit, the CSV header against
the id column, the first JSON line); rows that are not valid items become failed items
named after their line, as with :class:`~paceline.sources.CSV` and
:class:`~paceline.sources.JSONL`. Line numbers run on across the files (``@line:N`` ids
never collide); errors in any file after the first also name the file and its own line.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import ConfigError
from .sources import CSV, JSONL, IdSpec, Position, Record

if TYPE_CHECKING:
    from .job import Job

__all__ = ["Receiver", "Upload", "UploadRejected", "UploadTooLarge", "UploadedFile"]

FORMATS = ("csv", "jsonl")
INDEX = "index.json"
#: How much of a file's start is held to check its first line (a CSV header, a JSON line).
HEAD_LIMIT = 1 << 20


class UploadRejected(ConfigError):
    """A file the job cannot take (wrong format, no id column); nothing was kept."""

    status_code = 422


class UploadTooLarge(UploadRejected):
    """A file over the size limit; what had arrived was removed."""

    status_code = 413


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One file in a job's inbox: ``file`` is its name there, ``name`` the name it came
    with (sanitised), ``lines`` its physical lines."""

    file: str
    name: str
    sha256: str
    bytes: int
    lines: int
    uploaded_at: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Upload:
    """A job's input given at start time: CSV (with a header row) or JSON Lines files.

    ``id`` names the field (or a function of the record) giving the item id. The inbox is
    ``.paceline/uploads/<job name>/`` beside the job file, or ``folder`` (relative to the
    job file's folder).
    """

    def __init__(
        self,
        format: str = "csv",
        *,
        id: IdSpec = "id",
        delimiter: str = ",",
        encoding: str = "utf-8",
        folder: str | os.PathLike[str] | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ConfigError(f"Upload(format={format!r}): use 'csv' or 'jsonl'")
        self.format = format
        self.id = id
        self.delimiter = delimiter
        self.encoding = encoding
        self.folder = None if folder is None else Path(folder)
        self.job_name: str | None = None
        self._preview: list[tuple[Path, UploadedFile]] = []

    # -- where the files are -----------------------------------------------------------

    def bind(self, job: Job) -> None:
        """Tie the source to its job (done when a job file is loaded): the inbox is
        ``.paceline/uploads/<job>/`` beside the job file unless ``folder`` was given."""
        self.job_name = job.name
        if self.folder is None:
            self.folder = job.home / ".paceline" / "uploads" / job.name
        elif not self.folder.is_absolute():
            self.folder = job.home / self.folder

    @property
    def inbox(self) -> Path:
        if self.folder is None:
            raise ConfigError(
                "this Upload source belongs to no job yet: load the job with paceline "
                "(paceline run / serve), or give Upload(folder=...)"
            )
        return self.folder

    def files(self) -> list[UploadedFile]:
        """The files in the inbox, in the order they arrived (the order they are read)."""
        if self.folder is None:
            return []
        try:
            rows = json.loads((self.folder / INDEX).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the upload index in {self.folder}: {exc}") from None
        return [UploadedFile(**row) for row in rows]

    def describe(self) -> str:
        where = "" if self.folder is None else f" in {self.folder}"
        return f"uploaded {self.format.upper()} files{where}"

    def info(self) -> dict[str, Any]:
        """What the web API shows: the format, the id field and the files received."""
        return {
            "format": self.format,
            "id": self.id if isinstance(self.id, str) else None,
            "files": [f.as_dict() for f in self.files()],
        }

    # -- receiving files ---------------------------------------------------------------

    def receive(self, filename: str, *, max_bytes: int | None = None) -> Receiver:
        """Start taking a file (the client's ``filename`` is only a label): feed it with
        :meth:`Receiver.write`, then :meth:`Receiver.finish` (or :meth:`Receiver.abort`)."""
        return Receiver(self, filename, max_bytes)

    def add(self, path: str | os.PathLike[str]) -> tuple[UploadedFile, bool]:
        """Copy a local file into the inbox (checked as it streams); returns the entry and
        whether it is new (the same bytes given before are kept once)."""
        source = Path(path)
        receiver = self.receive(source.name)
        try:
            with _open_input(source) as f:
                while chunk := f.read(1 << 20):
                    receiver.write(chunk)
            return receiver.finish()
        except BaseException:
            receiver.abort()
            raise

    @contextlib.contextmanager
    def including(self, path: str | os.PathLike[str]) -> Iterator[UploadedFile]:
        """Read ``path`` as if it had been added, without writing anything (a dry run)."""
        source = Path(path)
        receiver = Receiver(self, source.name, None, keep=False)
        with _open_input(source) as f:
            while chunk := f.read(1 << 20):
                receiver.write(chunk)
        entry = receiver.finish()[0]
        known = {f.sha256 for f in self.files()}
        if entry.sha256 not in known:
            self._preview.append((source.resolve(), entry))
        try:
            yield entry
        finally:
            self._preview.clear()

    # -- reading -----------------------------------------------------------------------

    def read(self, start: Position) -> Iterator[Record]:
        """Every file in arrival order as one stream; ``start`` is a position in it."""
        files = [(self.inbox / f.file, f) for f in self.files()] + list(self._preview)
        total = sum(f.bytes for _, f in files)
        if start.offset > total:
            raise ConfigError(
                f"the uploads in {self.inbox} hold less than the store has read: "
                "a file was removed from the inbox"
            )
        base_offset = base_line = 0
        for n, (path, entry) in enumerate(files):
            end = base_offset + entry.bytes
            if start.offset < end:
                local = Position()
                if start.offset > base_offset:
                    local = Position(start.offset - base_offset, start.line - base_line)
                for record in self._reader(path).read(local):
                    yield _shifted(record, base_offset, base_line, entry if n else None)
            base_offset, base_line = end, base_line + entry.lines

    def _reader(self, path: Path) -> CSV | JSONL:
        if self.format == "csv":
            return CSV(path, id=self.id, delimiter=self.delimiter, encoding=self.encoding)
        return JSONL(path, id=self.id)


def _shifted(
    record: Record, base_offset: int, base_line: int, entry: UploadedFile | None
) -> Record:
    error = record.error
    if error is not None and entry is not None:
        error = f"{error} (line {record.line} of upload {entry.name!r})"
    after = Position(base_offset + record.after.offset, base_line + record.after.line)
    return dataclasses.replace(record, line=base_line + record.line, after=after, error=error)


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[IO[bytes]]:
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read input {path}: {exc.strerror or exc}") from None
    with f:
        yield f


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str, format: str) -> str:
    """A file name that names nothing but itself: no folders, no leading dots, only
    ``[A-Za-z0-9._-]``, at most 80 characters, ending in ``.csv`` or ``.jsonl``."""
    base = re.split(r"[/\\]", filename.replace("\x00", ""))[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _UNSAFE.sub("_", stem).strip("._-")[:80] or "upload"
    return f"{stem}.{format}"


class Receiver:
    """One file arriving: written to a temporary file in the inbox, checked as it comes
    (size, first line), then kept under a unique name (or dropped)."""

    def __init__(
        self, upload: Upload, filename: str, max_bytes: int | None, *, keep: bool = True
    ) -> None:
        self.upload = upload
        self.name = safe_name(filename, upload.format)
        self.max_bytes = max_bytes
        self.keep = keep
        self.size = 0
        self.newlines = 0
        self._last = b""
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._head_checked = False
        self._has_rows = False
        self._file: IO[bytes] | None = None
        self._temp: Path | None = None
        if keep:
            inbox = upload.inbox
            inbox.mkdir(parents=True, exist_ok=True)
            self._temp = inbox / f".incoming-{secrets.token_hex(8)}"
            self._file = self._temp.open("xb")

    def write(self, chunk: bytes) -> None:
        """Take the next bytes; raises :class:`UploadTooLarge` past the limit and
        :class:`UploadRejected` when the first line shows the file cannot be read."""
        if not chunk:
            return
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.abort()
            limit = size_text(self.max_bytes)
            raise UploadTooLarge(f"the file is larger than the limit of {limit}")
        self._hash.update(chunk)
        self.newlines += chunk.count(b"\n")
        self._last = chunk[-1:]
        if self._file is not None:
            self._file.write(chunk)
        if not self._head_checked:
            self._head += chunk
            self._check_head(final=False)
        elif not self._has_rows and chunk.strip():
            self._has_rows = True

    def _check_head(self, *, final: bool) -> None:
        head = bytes(self._head)
        if self.upload.format == "csv":
            end = head.find(b"\n")
            if end < 0 and not final:
                if len(head) > HEAD_LIMIT:
                    self._reject("the CSV header line is longer than 1 MiB")
                return
            header_bytes = head if end < 0 else head[: end + 1]
            rest = b"" if end < 0 else head[end + 1 :]
            self._check_header(header_bytes)
            self._has_rows = bool(rest.strip())
        else:
            stripped = head.lstrip()
            end = stripped.find(b"\n")
            if end < 0 and not final:
                if len(head) > HEAD_LIMIT:
                    self._reject("the first line is longer than 1 MiB")
                return
            first = stripped if end < 0 else stripped[:end]
            if first.strip():
                self._check_json_line(first)
                self._has_rows = True
        self._head_checked = True
        self._head = bytearray()

    def _check_header(self, raw: bytes) -> None:
        encoding = self.upload.encoding
        try:
            text = raw.decode("utf-8-sig" if _is_utf8(encoding) else encoding)
        except (UnicodeDecodeError, LookupError):
            self._reject(f"the CSV header is not {self.upload.encoding} text")
        if not text.strip():
            self._reject("the file is empty: a CSV file needs a header row and rows")
        try:
            header = next(csv.reader([text.rstrip("\r\n")], delimiter=self.upload.delimiter))
        except csv.Error as exc:
            self._reject(f"unreadable CSV header: {exc}")
        column = self.upload.id
        if isinstance(column, str) and column not in header:
            found = ", ".join(repr(h) for h in header[:10]) + (", …" if len(header) > 10 else "")
            self._reject(f"the CSV header has no {column!r} column (found {found})")

    def _check_json_line(self, line: bytes) -> None:
        try:
            data = json.loads(line)
        except ValueError:
            self._reject("this is not JSON Lines: the first line is not valid JSON")
        if not isinstance(data, dict):
            self._reject(f"the first line is not a JSON object but {type(data).__name__}")

    def _reject(self, message: str) -> Any:
        self.abort()
        raise UploadRejected(f"{self.name}: {message}")

    def finish(self) -> tuple[UploadedFile, bool]:
        """Check the end, then keep the file; returns its entry and whether it is new
        (a file with the same bytes already in the inbox is not kept twice)."""
        if not self._head_checked:
            self._check_head(final=True)
        if not self._has_rows:
            what = "rows after the header" if self.upload.format == "csv" else "rows"
            self._reject(f"the file has no {what}")
        lines = self.newlines + (1 if self._last not in (b"", b"\n") else 0)
        digest = self._hash.hexdigest()
        entry = UploadedFile("", self.name, digest, self.size, lines, time.time())
        if not self.keep:
            return dataclasses.replace(entry, file=self.name), True
        assert self._file is not None
        assert self._temp is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        inbox = self.upload.inbox
        with _locked(inbox):
            files = self.upload.files()
            same = next((f for f in files if f.sha256 == digest), None)
            if same is not None:
                self.abort()
                return same, False
            stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(entry.uploaded_at))
            entry = dataclasses.replace(entry, file=f"{stamp}-{len(files) + 1:04d}-{self.name}")
            target = inbox / entry.file
            # The name is built here, never taken from the client; this only guards it.
            if target.resolve().parent != inbox.resolve():
                self.abort()
                raise UploadRejected(f"{self.name}: not a valid file name")
            os.replace(self._temp, target)
            self._temp = None
            _write_index(inbox, [*files, entry])
        return entry, True

    def abort(self) -> None:
        """Drop what arrived (idempotent)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8")


def size_text(n: float) -> str:
    """``100 MiB``, or ``1,000 bytes`` below a mebibyte."""
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{int(n):,} bytes"


def _write_index(inbox: Path, files: list[UploadedFile]) -> None:
    temp = inbox / f".index-{secrets.token_hex(4)}"
    temp.write_text(json.dumps([f.as_dict() for f in files], indent=1))
    os.replace(temp, inbox / INDEX)


@contextlib.contextmanager
def _locked(inbox: Path) -> Iterator[None]:
    """One writer of the index at a time (``serve`` and a ``run --input`` may meet)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one writer is the user's care
        yield
        return
    with (inbox / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare_input(job: Job, path: str | os.PathLike[str] | None) -> str | None:
    """For ``paceline run``: add ``--input FILE`` to an upload job's inbox; refuse it for
    other jobs, and refuse an upload job with nothing to read. Returns a line to show."""
    source = job.source
    if not isinstance(source, Upload):
        if path is not None:
            raise ConfigError(
                f"--input is for jobs whose source is paceline.Upload(...); job {job.name!r} "
                f"reads {source.describe()}"
            )
        return None
    if path is None:
        if not source.files():
            raise ConfigError(
                f"job {job.name!r} takes its input as an upload: give a file with "
                "--input FILE, or upload one from `paceline serve`"
            )
        return None
    entry, new = source.add(path)
    if new:
        size = f"{entry.bytes:,} bytes"
        return f"paceline: added {entry.name} ({size}) to the uploads of job {job.name!r}"
    return f"paceline: {entry.name} was given before ({entry.file}): continuing"
