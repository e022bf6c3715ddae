"""The base TFDS builder of this package (local folder or download, array_record files) and record reading.

TensorFlow is not needed: TFDS writes array_record files with its NumPy example serializer and
``as_data_source`` reads them back through ``array_record`` alone. Text features come back as ``bytes``;
``read_records`` decodes them to ``str``.

Each source is prepared once, whole (every language it holds), into one cache folder: ``data_dir`` if given
(``--tfds-dir`` in the scripts), else ``$MOE_TFDS_DIR``, else ``tfds`` in the user cache folder
(``routing.outputs.cache.default_tfds_dir``). Languages are chosen when reading (``read_records(...,
languages=...)``), which reads only their rows. Prepared data is keyed by content: with a local ``source_dir``
the builder config's name (the prepared folder) ends in a digest of the bytes of every source file the config
reads (``routing.outputs.cache.content_key``), so a changed source file is prepared afresh instead of reusing
stale records. Downloaded sources are keyed by their fixed public URLs (their content is not known before
downloading). Preparing prints one line (what, from where, into where) on stderr instead of TFDS's download
banner, progress bars and absl warnings.

One TFDS quirk is worked around here: for a builder defined inside a package, TFDS 4.9 looks up its
``code_path`` through ``importlib_resources`` (a backport it only declares for Python < 3.9), so
``download_and_prepare`` fails without that package. ``SourceBuilder`` sets ``code_path`` to the
builder's source file, which is what TFDS itself falls back to.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import inspect
import io
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath

from moe.atomic import check_output_folder
from moe.network import offline_reason
from routing.outputs.cache import content_key, default_tfds_dir

tfds.display_progress_bar(False)  # preparing prints one line instead (SourceBuilder.download_and_prepare)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """Inside the block, TFDS's printed banners (stdout) and absl warnings below ERROR are dropped."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logging.set_verbosity(verbosity)


class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that reads files named by their path inside a data folder laid out like ``shared/data``.

    With ``source_dir`` the files are read from that folder; without it they are downloaded from
    ``SOURCE_URLS`` (relative path -> public URL) through TFDS's download manager, after a quick check
    that the server answers (`moe.network.offline_reason`). Builders whose data has no stable public URL
    leave ``SOURCE_URLS`` empty and need ``source_dir``. Subclasses whose files are not those of
    ``SOURCE_URLS`` list the files a config reads in ``source_files``. Prepared files go to ``data_dir``
    (TFDS's own argument, default ``default_tfds_dir()``; checked to be a writable folder before anything is
    read), keyed by the content of the local source files (module docstring); reading them back takes the
    same ``source_dir``, whose files are not read again while unchanged. Subclasses give each split's records
    in source order (``_splits``); they are stored language by language (``by_language``), so
    ``read_records`` finds a language's rows by bisection. Builders are not registered with TFDS by name
    (``tfds.builder``); construct the classes directly.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "records stored language by language", "1.0.0": "records in source order"}
    SOURCE_URLS: Mapping[str, str] = {}
    DESCRIPTION = ""
    HOMEPAGE = ""

    def __init_subclass__(cls, **kwargs: Any):
        kwargs.setdefault("skip_registration", True)
        super().__init_subclass__(**kwargs)
        cls.code_path = epath.Path(inspect.getfile(cls))

    def __init__(self, *, source_dir: str | Path | None = None,
                 config: str | tfds.core.BuilderConfig | None = None, **kwargs: Any):
        kwargs.setdefault("file_format", tfds.core.FileFormat.ARRAY_RECORD)
        kwargs["data_dir"] = str(check_output_folder(kwargs.get("data_dir") or default_tfds_dir(), may_exist=True))
        self.source_dir = None if source_dir is None else Path(source_dir)
        config = self._config_object(config)
        if self.source_dir is not None:
            base = config
            key = content_key(self._local(self.source_files(base)))[:16]
            config = (tfds.core.BuilderConfig(name=f"source-{key}") if base is None
                      else dataclasses.replace(base, name=f"{base.name}-{key}"))
        with quiet_tfds():  # TFDS warns that every keyed config is a "custom data configuration"
            super().__init__(config=config, **kwargs)

    def download_and_prepare(self, **kwargs: Any) -> None:
        """Prepare the data set unless it is prepared already, announced by one line on stderr (TFDS's
        banner, progress bars and warnings are silenced); ``kwargs`` go to TFDS's ``download_and_prepare``."""
        with quiet_tfds():  # TFDS warns about a folder it has not prepared yet
            if self.is_prepared():
                return
        origin = self.source_dir if self.source_dir is not None else "its public source"
        print(f"preparing {self.name} ({self.summary()}) from {origin} into {self.data_path} ...", file=sys.stderr,
              flush=True)
        with quiet_tfds():
            super().download_and_prepare(**kwargs)

    def summary(self) -> str:
        """What preparing reads, for the line announcing it (e.g. "devtest passages, 204 languages")."""
        return f"{len(self.source_files(self.builder_config))} source files"

    def source_files(self, config: tfds.core.BuilderConfig | None) -> list[str]:
        """The relative paths (in a folder like ``shared/data``) that ``config`` reads: by default, those of
        ``SOURCE_URLS``."""
        return list(self.SOURCE_URLS)

    def _config_object(self, config: str | tfds.core.BuilderConfig | None) -> tfds.core.BuilderConfig | None:
        """The config a name (or None: the default) stands for."""
        if config is None or isinstance(config, tfds.core.BuilderConfig):
            return config if config is not None else self.get_default_builder_config()
        if config not in self.builder_configs:
            raise ValueError(f"unknown config {config!r}; known: {sorted(self.builder_configs)}")
        return self.builder_configs[config]

    def _features(self) -> dict[str, Any]:
        """The fields of a record and their TFDS features."""
        raise NotImplementedError

    def _splits(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
        """Split name -> its (key, record) pairs, in source order."""
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
        """``_splits``, each stored language by language (see ``by_language``)."""
        return {split: by_language(examples) for split, examples in self._splits(dl_manager).items()}

    def _info(self) -> tfds.core.DatasetInfo:
        """DatasetInfo (``DESCRIPTION``, ``HOMEPAGE``, ``_features``) that keeps generation order (so row index
        order is the source's order)."""
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE,
                                     features=tfds.features.FeaturesDict(self._features()), disable_shuffling=True)

    def _locate(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Path]:
        """Local paths of the config's ``source_files`` (downloaded without ``source_dir``); FileNotFoundError
        naming the first one missing."""
        relpaths = self.source_files(self.builder_config)
        if self.source_dir is not None:
            return self._local(relpaths)
        return self._found(self._download(dl_manager, relpaths))

    def _local(self, relpaths: Sequence[str]) -> dict[str, Path]:
        return self._found({rel: self.source_dir / rel for rel in relpaths})

    def _found(self, paths: dict[str, Path]) -> dict[str, Path]:
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"{self.name}: source file not found: {path}")
        return paths

    def _require_network(self, url: str) -> None:
        """ConnectionError at once, instead of minutes of download retries, when ``url`` cannot be reached."""
        reason = offline_reason(url)
        if reason is not None:
            raise ConnectionError(f"{self.name}: cannot download its source ({reason}); pass a local data "
                                  "folder laid out like shared/data (source_dir=, --data-dir in the scripts)")

    def _download(self, dl_manager: tfds.download.DownloadManager, relpaths: Sequence[str]) -> dict[str, Path]:
        """Download ``relpaths`` from their public URLs."""
        unknown = [rel for rel in relpaths if rel not in self.SOURCE_URLS]
        if unknown:
            raise ValueError(f"{self.name}: no public download source for {unknown}; "
                             "pass source_dir= a folder laid out like shared/data")
        self._require_network(self.SOURCE_URLS[relpaths[0]])
        downloaded = dl_manager.download({rel: self.SOURCE_URLS[rel] for rel in relpaths})
        return {rel: Path(path) for rel, path in downloaded.items()}

    def _source_glob(self, folder: str, pattern: str, *, allow_empty: bool = False) -> list[str]:
        """Relative paths under ``source_dir/folder`` matching ``pattern``, sorted; needs a local folder."""
        if self.source_dir is None:
            raise ValueError(f"{self.name}: no public download source; pass source_dir= a folder laid out "
                             "like shared/data")
        root = self.source_dir / folder
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name}: source folder not found: {root}")
        found = sorted(f"{folder}/{path.name}" for path in root.glob(pattern))
        if not found and not allow_empty:
            raise FileNotFoundError(f"{self.name}: no files matching {pattern!r} in {root}")
        return found


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, split on ``\\n`` (or ``\\r\\n``) only, never on other separators."""
    text = path.read_bytes().decode("utf-8")
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []


def decode_value(value: Any) -> Any:
    """A value read from a TFDS data source with bytes -> str, arrays -> lists, NumPy scalars -> Python."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [decode_value(item) for item in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [decode_value(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def by_language(examples: Iterator[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """Records with a ``language`` sorted by ``"{language}/"`` (stable: each language's records keep their
    order), the order ``read_records`` bisects; records without one pass through as they come."""
    examples = list(examples)
    if examples and "language" in examples[0][1]:
        examples.sort(key=lambda example: example[1]["language"] + "/")
    yield from examples


def _language_key(source: Sequence[Mapping[str, Any]]):
    """Row index -> ``"{language}/"``, by which the rows of a `SourceBuilder` split are sorted."""
    return lambda index: decode_value(source[index]["language"]) + "/"


def record_languages(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
    """The languages of a prepared split of a `SourceBuilder` with a ``language`` field, in stored order,
    found by bisection (a few rows read per language)."""
    source = builder.as_data_source(split)
    key, rows, languages, start = _language_key(source), range(len(source)), [], 0
    while start < len(source):
        languages.append(key(start).removesuffix("/"))
        start = bisect.bisect_right(rows, key(start), lo=start, key=key)
    return languages


def read_records(builder: tfds.core.DatasetBuilder, split: str,
                 languages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The records of a prepared split, with text decoded to ``str``: all of them in stored order, or those of
    ``languages`` (in that order; each language's rows in stored order), reading only their rows. ValueError
    for a language the split does not hold."""
    source = builder.as_data_source(split)
    if languages is None:
        indices = range(len(source))
    else:
        key, rows, indices = _language_key(source), range(len(source)), []
        for language in dict.fromkeys(languages):
            start = bisect.bisect_left(rows, f"{language}/", key=key)
            end = bisect.bisect_right(rows, f"{language}/", lo=start, key=key)
            if start == end:
                raise ValueError(f"{builder.name} ({split}) has no records in {language}")
            indices.extend(range(start, end))
    return [{field: decode_value(value) for field, value in row.items()} for row in source.__getitems__(indices)]


def first_passages(records: Sequence[Mapping[str, Any]], languages: Sequence[str],
                   max_passages: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Passage records by language (``languages``, in that order), each sorted by passage id and cut to the first
    ``max_passages`` (None: all)."""
    passages: dict[str, list[dict[str, Any]]] = {code: [] for code in languages}
    for record in records:
        passages[record["language"]].append(dict(record))
    return {code: sorted(rows, key=lambda r: r["passage_id"])[:max_passages] for code, rows in passages.items()}
