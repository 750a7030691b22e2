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


def test_names_in_other_scripts_and_with_accents_match(tmp_path):
    tax = tmp_path / "t.yaml"
    tax.write_text(
        "name: local\nversion: '1'\nclasses:\n"
        "  - {id: nature, name: 自然, definition: 自然风光}\n"
        "  - {id: city, name: 城市, definition: 城市景观}\n"
        "  - {id: ecology, name: Écologie, definition: la vie sauvage}\n"
        "  - {id: cafe, name: Café, definition: un café, synonyms: [Kaffeehaus]}\n",
        encoding="utf-8",
    )
    t = load_taxonomy(tax)
    assert [t.match(s) for s in ["自然", " 城市 ", "ECOLOGIE", "écologie", "Cafe", "kaffeehaus"]] == [
        "nature", "city", "ecology", "ecology", "cafe", "cafe"]  # fmt: skip
    assert t.match("自然风光") is None and t.match("Caf") is None and t.match("…") is None


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


BROKEN = """name: mine
version: 1
colour: red
classes:
  - id: beach
    name: Beach
    definition: sand and sea
  - id: beach
    name: Seaside
    definiton: a typo of definition
  - id: hiking
    name: Hiking
    definition: ""
"""


def test_every_problem_is_reported_at_once_with_its_line():
    with pytest.raises(TaxonomyError) as info:
        parse_taxonomy(BROKEN, source="mine.yaml")
    problems = info.value.problems
    assert problems == [
        "mine.yaml:3: taxonomy.colour: unknown field 'colour' "
        "(known: name, version, description, classes, open_set)",
        "mine.yaml:8: classes[1].definition: required, a non-empty string",
        "mine.yaml:8: classes[1].id: duplicate class id 'beach' (also classes[0])",
        "mine.yaml:10: classes[1].definiton: unknown key 'definiton' "
        "(known: id, name, definition, prompts, synonyms)",
        "mine.yaml:13: classes[2].definition: required, a non-empty string",
    ]
    assert str(info.value).startswith("mine.yaml: 5 problems: ")


def test_a_key_given_twice_and_a_yaml_error_name_their_line():
    twice = "name: x\nversion: 1\nclasses:\n - {id: a, name: A, definition: d}\n - id: b\n   name: B\n   definition: one\n   definition: two\n"
    with pytest.raises(TaxonomyError, match=r"mine.yaml:8: classes\[1\].definition: given twice"):
        parse_taxonomy(twice, source="mine.yaml")
    with pytest.raises(TaxonomyError) as info:
        parse_taxonomy("name: x\nversion: 1\nclasses: [\n  {id: a\n", source="mine.yaml")
    assert str(info.value).startswith("mine.yaml:5: not valid YAML")
    assert "<unicode string>" not in str(info.value)


def test_taxonomy_show_lists_every_problem_one_per_line(tmp_path):
    from typer.testing import CliRunner

    from naturelens.cli import app

    path = tmp_path / "mine.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    result = CliRunner().invoke(app, ["taxonomy", "show", str(path)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 5 and all(str(path) + ":" in line for line in errors)
    assert "Traceback" not in result.output
