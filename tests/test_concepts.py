"""The concept pack: builder, loader validation, graph queries, melds and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hatcat.concepts import Concept, ConceptPack, ConceptPackError, load_meld, load_pack, merge_into
from hatcat.concepts.build import build_pack
from hatcat.concepts.pack import DEFAULT_PACK_DIR, PACK_FILE
from hatcat.concepts.wordnet import DEFAULT_DIR as WORDNET_DIR
from hatcat.paths import ROOT, SAFETY_MELD

SHARED_SOURCES = ROOT.parent / "shared" / "sources" / "sumo-wordnet"
SAFETY_IDS = {"Deception", "Manipulation", "Sycophancy", "Honesty", "Uncertainty", "Refusal", "Flattery", "Evasion"}


@pytest.fixture(scope="module")
def pack() -> ConceptPack:
    return load_pack()


@pytest.fixture(scope="module")
def merged(pack: ConceptPack) -> ConceptPack:
    return merge_into(pack, load_meld(SAFETY_MELD))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hatcat.concepts", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- builder -------------------------------------------------------------------------


def write_small_sources(folder: Path) -> Path:
    """Six tiny layer files and two KIF files exercising every repair the builder does."""

    def record(term: str, layer: int, children: tuple[str, ...] = (), definition: str = "", depth: int = 5) -> dict:
        return {
            "sumo_term": term,
            "layer": layer,
            "sumo_depth": depth,
            "category_children": list(children),
            "synsets": [],
            "lemmas": [term.lower()],
            "pos": None,
            "canonical_synset": None,
            "definition": definition or f"SUMO category: {term}",
        }

    layers = {
        0: [record("Entity", 0, ("Physical",), "the top", depth=0), record("Physical", 0, ("Process",), "things")],
        1: [record("Process", 1, (), "happenings")],
        2: [record("Motion", 2)],
        3: [],
        4: [record("Walking", 4, (), "moving on foot"), record("Orphan", 4, (), "no known ancestor")],
        5: [],
    }
    folder.mkdir(parents=True)
    for n, records in layers.items():
        (folder / f"layer{n}.json").write_text(json.dumps({"metadata": {"layer": n}, "concepts": records}))
    (folder / "Merge.kif").write_text(
        ";; comment (subclass Nope Entity)\n(subclass Motion Process)\n"
        '(documentation Motion EnglishLanguage "Any &%Process of\n movement.")\n'
        "(=> (instance ?X Walking) (attribute ?X Slow))\n"
    )
    (folder / "Domain.kif").write_text("(subclass Walking Locomotion)\n(subclass Locomotion Motion)\n")
    return folder


def test_builder_output_is_byte_identical_on_rebuild(tmp_path: Path) -> None:
    sources = write_small_sources(tmp_path / "src")
    first = build_pack(sources, tmp_path / "a", wordnet=None, log=lambda _: None)
    second = build_pack(sources, tmp_path / "b", wordnet=None, log=lambda _: None)
    assert (tmp_path / "a" / PACK_FILE).read_bytes() == (tmp_path / "b" / PACK_FILE).read_bytes()
    assert first.checksum == second.checksum


def test_builder_restores_parents_and_documentation_from_kif(tmp_path: Path) -> None:
    built = build_pack(write_small_sources(tmp_path / "src"), tmp_path / "out", wordnet=None, log=lambda _: None)
    assert built["Motion"].parents == ("Process",)
    assert built["Walking"].parents == ("Motion",)  # nearest ancestor in the pack, via Locomotion
    assert built["Entity"].parents == () and built["Orphan"].parents == ()
    assert built["Motion"].definition == "Any Process of movement."


@pytest.mark.skipif(
    not (SHARED_SOURCES / "layer0.json").is_file() or not (WORDNET_DIR / "data.noun").is_file(),
    reason="needs ../shared/sources/sumo-wordnet and WordNet (wordnet-base); absent on a clean clone",
)
def test_rebuild_from_sources_reproduces_committed_pack(tmp_path: Path) -> None:
    result = cli("build", "--sources", str(SHARED_SOURCES), "--out", str(tmp_path / "pack"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pack" / PACK_FILE).read_bytes() == (DEFAULT_PACK_DIR / PACK_FILE).read_bytes()


# --- committed pack --------------------------------------------------------------------


def test_committed_pack_meets_coverage_targets(pack: ConceptPack) -> None:
    assert len(pack) >= 5582
    assert {c.layer for c in pack} == set(range(6))
    middle = [c for c in pack if 1 <= c.layer <= 4]
    assert sum(1 for c in middle if c.parents) / len(middle) >= 0.95
    assert sum(1 for c in pack if c.has_placeholder_definition) <= 0.05 * len(pack)
    assert (DEFAULT_PACK_DIR / PACK_FILE).stat().st_size < 10_000_000


def test_anger_path_reaches_layer0_root(pack: ConceptPack) -> None:
    path = pack.ancestors("Anger")
    assert path[0] == "EmotionalState"
    assert path[-1] == "Entity" and pack["Entity"].layer == 0 and not pack.parents("Entity")
    assert all(b in pack.parents(a) for a, b in zip(["Anger", *path], path))


def test_graph_queries_on_sumo_terms(pack: ConceptPack) -> None:
    anger = pack["Anger"]
    assert anger.layer == 4 and "anger.n.01" in anger.synsets and "fury" in anger.hyponyms
    assert "Anger" in pack.children("EmotionalState") and "Fear" in pack.siblings("Anger")
    assert pack.graph.has_edge("EmotionalState", "Anger")
    assert [c.id for c in pack.layer(0)][:2] == ["Abstract", "Attribute"]
    assert pack.search("ANGER")[0].id == "Anger"
    assert pack.ids == [c.id for c in pack] == sorted(pack.ids, key=lambda i: (pack[i].layer, i))
    assert "Anger" in pack and "NoSuchTerm" not in pack
    with pytest.raises(KeyError, match="NoSuchTerm"):
        pack["NoSuchTerm"]


# --- validation ------------------------------------------------------------------------


def write_pack(folder: Path, concepts: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PACK_FILE).write_text(json.dumps({"format": 1, "id": "broken", "concepts": concepts}))
    return folder


@pytest.mark.parametrize(
    ("concepts", "message"),
    [
        ([{"id": "A", "layer": 0, "parents": []}, {"id": "B", "layer": 1, "parents": ["Ghost"]}], "'B'.*'Ghost'"),
        ([{"id": "A", "layer": 0, "parents": ["B"]}, {"id": "B", "layer": 1, "parents": ["A"]}], "cycle.*A -> B"),
        ([{"id": "A", "layer": 0, "parents": []}, {"id": "A", "layer": 1, "parents": []}], "duplicate.*'A'"),
        ([{"id": "A", "layer": -1, "parents": []}], "'A'.*layer"),
    ],
    ids=["missing-parent", "cycle", "duplicate-id", "bad-layer"],
)
def test_loading_broken_pack_names_bad_entry(tmp_path: Path, concepts: list[dict], message: str) -> None:
    with pytest.raises(ConceptPackError, match=message):
        ConceptPack.load(write_pack(tmp_path / "pack", concepts))


def test_loading_missing_or_corrupt_file_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConceptPackError, match="no concept pack"):
        ConceptPack.load(tmp_path / "nowhere")
    (tmp_path / PACK_FILE).write_text("{not json")
    with pytest.raises(ConceptPackError, match="not valid JSON"):
        ConceptPack.load(tmp_path)


# --- melds -----------------------------------------------------------------------------


def test_safety_meld_merges_with_parents_in_base(pack: ConceptPack, merged: ConceptPack) -> None:
    meld = load_meld(SAFETY_MELD)
    authored = [c for c in meld.concepts if c.id not in pack]
    assert len(authored) >= 12 and SAFETY_IDS <= {c.id for c in authored}
    for entry in meld.concepts:
        concept = merged[entry.id]
        assert concept.source == "safety-v1" and concept.definition
        assert len(concept.positive_examples) >= 8 and len(concept.negative_examples) >= 8
        assert set(entry.parents) <= set(concept.parents)
        assert all(p in pack or p in merged for p in concept.parents)
        assert merged.ancestors(entry.id)[-1] == "Entity"
    assert "Deception" in merged.children("Pretending") and "Lying" in merged.children("Deception")
    assert len(merged) == len(pack) + len(authored)
    assert merged.checksum != pack.checksum and "Deception" not in pack


def test_meld_with_existing_id_enriches_concept(tmp_path: Path, pack: ConceptPack) -> None:
    meld = tmp_path / "extra.json"
    meld.write_text(
        json.dumps(
            {
                "id": "extra",
                "concepts": [
                    {"id": "Anger", "parents": ["StateOfMind"], "positive_examples": ["I am furious."]},
                ],
            }
        )
    )
    anger = merge_into(pack, load_meld(meld))["Anger"]
    assert anger.parents == ("EmotionalState", "StateOfMind") and anger.layer == pack["Anger"].layer
    assert anger.definition == pack["Anger"].definition and anger.positive_examples == ("I am furious.",)
    assert anger.source == "extra"


@pytest.mark.parametrize(
    ("concepts", "message"),
    [
        ([{"id": "X", "parents": ["Ghost"], "definition": "x"}], "'X'.*'Ghost'"),
        ([{"id": "X", "parents": ["Y"], "definition": "x"}, {"id": "Y", "parents": ["X"], "definition": "y"}], "cycle"),
        ([{"id": "X", "parents": ["Entity"]}, {"id": "X", "parents": ["Entity"]}], "duplicate.*'X'"),
        ([{"id": "X", "parents": []}], "'X'.*parent"),
    ],
    ids=["missing-parent", "cycle", "duplicate-id", "no-parent"],
)
def test_broken_meld_names_bad_entry(tmp_path: Path, pack: ConceptPack, concepts: list, message: str) -> None:
    meld = tmp_path / "bad.yaml"
    meld.write_text(json.dumps({"id": "bad", "concepts": concepts}))  # JSON is valid YAML
    with pytest.raises(ConceptPackError, match=message):
        merge_into(pack, load_meld(meld))


def test_concept_defaults_describe_base_concept() -> None:
    concept = Concept(id="X", layer=2)
    assert concept.source == "base" and concept.children == () and concept.has_placeholder_definition


# --- CLI -------------------------------------------------------------------------------


def test_cli_stats_json_reports_committed_pack() -> None:
    result = cli("stats", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] >= 5582 and set(report["per_layer"]) == {str(n) for n in range(6)}
    assert report["orphans"] == len(report["orphan_ids"])
    assert report["placeholder_definitions"] <= 0.05 * report["total"]


def test_cli_bad_pack_path_exits_2_with_one_line(tmp_path: Path) -> None:
    result = cli("stats", "--pack", str(tmp_path / "missing"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "no concept pack" in result.stderr


def test_cli_build_without_sources_exits_2_with_one_line(tmp_path: Path) -> None:
    result = cli("build", "--sources", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no layer files" in result.stderr
