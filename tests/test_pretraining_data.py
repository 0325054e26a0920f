"""The pod experiments' pretraining corpus: FineWeb-Edu streamed from the hub, offline.

The hub cannot be reached here, so each test lays out a local copy of the
dataset repository, as the hub holds it (a ``README.md`` whose ``configs`` map
``sample-10BT`` to ``sample/10BT/*``, and data files with FineWeb-Edu's
columns), filled with real text: Shakespeare's works cut into page-sized
documents. ``HubDataset`` streams such a directory through the same
``datasets.load_dataset(name, config, split=..., streaming=True)`` call as a hub
name, so only ``source.name`` differs from the experiment.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from collections import Counter

import fiddle as fdl
import numpy as np
import pytest

from xlafw.config import build_config
from xlafw.config.hardware import tpu_target
from xlafw.config.plan import format_plan, make_plan
from xlafw.data import (
    SHAKESPEARE_TEXTS,
    HostShard,
    HubDataset,
    SentencePieceTokenizer,
    StreamPosition,
    TextFiles,
)
from xlafw.launch.slices import slice_type

CARD = """---
license: odc-by
configs:
  - config_name: default
    data_files:
      - split: train
        path: data/*/*
  - config_name: sample-10BT
    data_files:
      - split: train
        path: sample/10BT/*
---
# FineWeb-Edu layout, Shakespeare text (test fixture)
"""
PAGE_CHARS = 3000  # about the length of a FineWeb-Edu page
V5P_256_HOSTS = slice_type("v5p-256").hosts  # 32: 128 chips, 4 per host


def _shakespeare_pages() -> list[dict]:
    """Records with FineWeb-Edu's columns; each text is consecutive paragraphs of one work."""
    records = []
    source = TextFiles(paths=(SHAKESPEARE_TEXTS,), sample_by="document")
    for path, work in zip(source.resolved_paths(), source.documents(0, 1), strict=True):
        name = path.rsplit("/", 1)[-1].removesuffix("_gut.txt")
        page: list[str] = []
        for paragraph in work.split("\n\n"):
            page.append(paragraph)
            if sum(map(len, page)) >= PAGE_CHARS:
                records.append(_record(name, len(records), "\n\n".join(page)))
                page = []
        if page:
            records.append(_record(name, len(records), "\n\n".join(page)))
    return records


def _record(work: str, index: int, text: str) -> dict:
    score = 2.5 + (index % 20) / 10
    return {
        "text": text,
        "id": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{work}/{index}')}>",
        "dump": "CC-MAIN-2024-10",
        "url": f"https://shakespeare.example/{work}/{index}",
        "file_path": "s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/0/warc/0.warc.gz",
        "language": "en",
        "language_score": 0.9 + (index % 10) / 100,
        "token_count": len(text) // 4,
        "score": score,
        "int_score": round(score),
    }


@pytest.fixture(scope="module")
def pages() -> list[dict]:
    return _shakespeare_pages()


def _write_repository(root, pages: list[dict], format: str, files: int = 2) -> str:
    """A FineWeb-Edu-shaped repository under ``root``, ``sample/10BT`` in ``files`` files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("text", pa.string()),
            ("id", pa.string()),
            ("dump", pa.string()),
            ("url", pa.string()),
            ("file_path", pa.string()),
            ("language", pa.string()),
            ("language_score", pa.float64()),
            ("token_count", pa.int64()),
            ("score", pa.float64()),
            ("int_score", pa.int64()),
        ]
    )
    (root / "README.md").write_text(CARD)
    parts = [("data/CC-MAIN-2024-10/000_00000", pages[:5])]  # the default config's dump
    parts += [(f"sample/10BT/{i:03d}_00000", pages[i::files]) for i in range(files)]
    for stem, records in parts:
        (root / stem).parent.mkdir(parents=True, exist_ok=True)
        if format == "parquet":
            table = pa.Table.from_pylist(records, schema=schema)
            pq.write_table(table, root / f"{stem}.parquet", row_group_size=64)
        else:
            with open(root / f"{stem}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    return str(root)


@pytest.fixture(scope="module", params=["parquet", "json"])
def repository(request, tmp_path_factory, pages) -> str:
    return _write_repository(tmp_path_factory.mktemp(request.param), pages, request.param)


def _pod_pipeline(repository: str, host: HostShard):
    """llama_8b's data pipeline; the source streams ``repository`` instead of the hub.

    The tokenizer is the other swap: the experiment's Llama 3 tokenizer is a
    gated hub download, so the local 32k sentencepiece model stands in.
    """
    data = build_config("llama_8b").data
    data.source.name = repository
    data.tokenizer = fdl.Config(SentencePieceTokenizer)
    return fdl.build(data)(host=host)


def test_pod_experiments_stream_fineweb_edu_from_the_hub():
    for name in ("llama_8b", "llama_70b", "llama_405b"):
        source = fdl.build(build_config(name).data.source)
        assert source == HubDataset(
            name="HuggingFaceFW/fineweb-edu", config_name="sample-10BT", split="train"
        )
        assert source.problems() == []


def test_local_repository_streams_the_configs_files_with_the_hub_schema(repository, pages):
    source = HubDataset(name=repository, config_name="sample-10BT", split="train")
    records = list(source.records(0, 1))
    assert Counter(r["id"] for r in records) == Counter(p["id"] for p in pages)
    assert set(records[0]) == set(pages[0])
    assert Counter(source.documents(0, 1)) == Counter(p["text"] for p in pages)


def test_hub_hosts_read_disjoint_records_that_cover_the_stream(repository, pages):
    source = HubDataset(name=repository, config_name="sample-10BT")
    for hosts in (2, 3):  # 2 files on 2 hosts: whole files; on 3: every third record
        parts = [Counter(r["id"] for r in source.records(rank, hosts)) for rank in range(hosts)]
        assert sum(parts, Counter()) == Counter(p["id"] for p in pages)
        assert min(sum(p.values()) for p in parts) >= len(pages) // hosts - 1


def test_shuffled_hub_stream_is_seeded_and_hosts_stay_disjoint(tmp_path, pages):
    # JSON Lines: every pass over a shuffled Parquet stream ends in a 5 s sleep in
    # datasets 5.2 (BUILD_NOTES.md, issue 14).
    repository = _write_repository(tmp_path, pages, "json")
    source = HubDataset(name=repository, config_name="sample-10BT", shuffle_buffer=100, seed=3)
    hosts = [list(source.documents(rank, 2)) for rank in range(2)]
    assert Counter(hosts[0] + hosts[1]) == Counter(p["text"] for p in pages)
    assert hosts[0] != [p["text"] for p in pages[0::2]]  # shuffled
    assert list(source.documents(0, 2)) == hosts[0]  # the same on every run


def test_pod_pipeline_packs_whole_documents_with_segment_ids(repository, pages):
    pipeline = _pod_pipeline(repository, HostShard(5, V5P_256_HOSTS))
    tokenizer, eos = pipeline.tokenizer, pipeline.tokenizer.eos_id
    documents = {tuple(ids) for ids in tokenizer.encode_batch([p["text"] for p in pages])}
    whole = 0
    for batch in itertools.islice(iter(pipeline), 2):
        assert set(batch) == {"input_ids", "labels", "segment_ids", "position_ids"}
        assert batch["input_ids"].shape == (256 // V5P_256_HOSTS, 8192)
        for ids, segments, positions in zip(
            batch["input_ids"].numpy(),
            batch["segment_ids"].numpy(),
            batch["position_ids"].numpy(),
            strict=True,
        ):
            after_eos = np.concatenate([[False], ids[:-1] == eos])
            np.testing.assert_array_equal(np.diff(segments) != 0, after_eos[1:])
            assert segments[0] == 1 and (positions[after_eos] == 0).all()
            ends = np.flatnonzero(ids == eos)
            for start, end in itertools.pairwise(ends):  # documents wholly inside the row
                assert tuple(ids[start + 1 : end]) in documents
                whole += 1
    assert whole > 20


def test_pod_pipeline_resumes_at_the_exact_next_token(repository):
    host = HostShard(5, V5P_256_HOSTS)
    straight = _pod_pipeline(repository, host)
    batches = list(itertools.islice(iter(straight), 4))
    saved = json.loads(json.dumps(dataclasses.asdict(straight.position_after(2))))  # checkpoint
    resumed = _pod_pipeline(repository, host)
    resumed.restore(StreamPosition(**saved), batches=2)
    for a, b in zip(batches[2:], itertools.islice(iter(resumed), 2), strict=True):
        assert all((a[k] == b[k]).all() for k in a)
    assert resumed.position_after(4) == straight.position_after(4)


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("name", "fineweb-edu", "not a hub dataset name"),
        ("name", "HuggingFaceFW/fineweb-edu/sample", "not a hub dataset name"),
        ("name", "HuggingFaceFW/-fineweb", "not a hub dataset name"),
        ("name", "Hugging Face/fineweb-edu", "not a hub dataset name"),
        ("name", "./no/such/directory", "no such directory"),
        ("config_name", "", "blank"),
        ("config_name", " sample-10BT", "padded with spaces"),
        ("split", "", "not a split name"),
        ("split", "train[:1%]", "slices such as"),
        ("text_field", "", "text_field is empty"),
        ("revision", "main branch", "not a revision"),
    ],
)
def test_malformed_hub_names_are_reported_with_a_fix(field, value, problem):
    source = dataclasses.replace(
        HubDataset(name="HuggingFaceFW/fineweb-edu", config_name="sample-10BT"), **{field: value}
    )
    [message] = source.problems("data.source")
    assert message.startswith(f"data.source.{field}")
    assert problem in message and "Fix:" in message


def test_well_formed_hub_names_and_local_directories_have_no_problem(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    for name in ("HuggingFaceFW/fineweb-edu", "allenai/c4", "a/b.c_d-1", str(tmp_path)):
        assert HubDataset(name=name, revision="v1.2.0").problems() == []


def test_an_empty_local_dataset_directory_is_a_problem(tmp_path):
    [message] = HubDataset(name=str(tmp_path)).problems("data.source")
    assert message.startswith("data.source.name=") and "holds no files" in message


def test_malformed_hub_name_fails_before_any_download():
    with pytest.raises(ValueError, match="not a hub dataset name"):
        HubDataset(name="fineweb-edu").records(0, 1)


def test_dry_run_plan_shows_the_hub_dataset():
    text = format_plan(make_plan(build_config("llama_8b"), tpu_target("v5p-256")))
    assert (
        "hub dataset HuggingFaceFW/fineweb-edu (config sample-10BT, split train), streamed" in text
    )
    assert "segment ids: attention stops at document boundaries" in text
