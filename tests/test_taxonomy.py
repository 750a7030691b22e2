import pytest

from naturelens.taxonomy import TaxonomyError, builtin_taxonomies, load_taxonomy, parse_taxonomy


def test_builtin_taxonomies_load():
    assert {"flips", "ces11"} <= set(builtin_taxonomies())
    flips = load_taxonomy("flips")
    assert [c.name for c in flips.classes] == [
        "Cultural-Religious",
        "Fauna-Flora",
        "Gastronomy",
        "Nature",
        "Sport",
        "Urban-Rural",
    ]
    assert all(c.definition for c in flips.classes)
    ces = load_taxonomy("ces11")
    assert len(ces.classes) == 10 and ces.open_set.id == "not_relevant"
    assert len(ces.all_ids) == 11


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("Fauna-Flora", "fauna_flora"),
        ("fauna flora", "fauna_flora"),
        ("  URBAN_rural ", "urban_rural"),
        ("wildlife", "fauna_flora"),
        ("Cultural-Religious.", "cultural_religious"),
        ("pizza", None),
        ("", None),
    ],
)
def test_match_names_ids_and_synonyms(answer, expected):
    assert load_taxonomy("flips").match(answer) == expected


def test_ampersand_names_match():
    assert load_taxonomy("ces11").match("Sun & Beach") == "sun_beach"
    assert load_taxonomy("ces11").match("sun and beach") == "sun_beach"


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\nversion: 1\n", "taxonomy.classes"),
        ("version: 1\nclasses: []\n", "taxonomy.name"),
        (
            "name: x\nversion: 1\nclasses:\n - {id: a, name: A, definition: d}\n - {id: B!, name: B, definition: d}\n",
            "classes[1].id",
        ),
        (
            "name: x\nversion: 1\nclasses:\n - {id: a, name: A, definition: d}\n - {id: b, name: B}\n",
            "classes[1].definition",
        ),
        (
            "name: x\nversion: 1\nclasses:\n - {id: a, name: A, definition: d}\n - {id: b, name: a, definition: d}\n",
            "already names class",
        ),
        (
            "name: x\nversion: 1\ncolour: red\nclasses:\n - {id: a, name: A, definition: d}\n - {id: b, name: B, definition: d}\n",
            "unknown field",
        ),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_validation_errors_name_file_and_field(text, message):
    with pytest.raises(TaxonomyError) as exc:
        parse_taxonomy(text, source="mine.yaml")
    assert "mine.yaml" in str(exc.value) and message in str(exc.value)


def test_missing_file_says_what_exists(tmp_path):
    with pytest.raises(TaxonomyError, match="built-in: ces11, flips"):
        load_taxonomy(tmp_path / "nope.yaml")
