"""The flag generator (`eftclip.cli.config_flags`) on a config of every kind of field it spells."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from eftclip.cli.config_flags import add_config_flags, config_from_args
from eftclip.config import cli_flag
from eftclip.errors import EftclipError


@dataclass(frozen=True)
class Toy:
    """Every kind of field the flags spell."""

    images: str  # what to look at
    tau: int = 5  # list length
    theta: float | None = None  # threshold; None = the model's
    mode: str = field(default="robust", metadata=cli_flag(choices=("robust", "faithful")))  # how to decide
    sizes: tuple[int, ...] = field(default=(8, 16), metadata=cli_flag("--size"))  # patch sides
    thetas: tuple[float, ...] = (0.5, 0.75)  # thresholds swept
    labels: tuple[str, ...] = ()  # labels always kept
    oracle_args: dict = field(default_factory=dict, metadata=cli_flag("--oracle-arg"))  # oracle arguments
    include_clean: bool = field(default=True, metadata=cli_flag("--clean"))  # also the untouched images
    figure_n: int = 5  # not a flag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    add_config_flags(p, Toy, skip=("figure_n",))
    return p


def _build(argv, **kw) -> Toy:
    return config_from_args(_parser().parse_args(argv), Toy, **kw)


def test_tuple_and_dict_flags_parse_into_their_types():
    cfg = _build(["--images", "x", "--size", "4, 12", "--size", "20", "--thetas", "0.1,0.9", "--labels", "cat,dog",
                  "--oracle-arg", "regions=foreground", "--oracle-arg", "min-score=0.05", "--oracle-arg", "tags=[1,2]"])
    assert cfg.sizes == (4, 12, 20)  # comma-separated, and every use of the flag adds its items
    assert cfg.thetas == (0.1, 0.9) and all(type(t) is float for t in cfg.thetas)
    assert cfg.labels == ("cat", "dog")
    # the one KEY=VALUE parser: dashes in keys become underscores, values are JSON when they parse
    assert cfg.oracle_args == {"regions": "foreground", "min_score": 0.05, "tags": [1, 2]}
    # an item holding a comma is quoted as in CSV
    assert _build(["--images", "x", "--labels", '"a photo of a {}, small",dog']).labels == ("a photo of a {}, small",
                                                                                           "dog")


def test_renamed_bool_and_choices():
    assert _build(["--images", "x", "--no-clean"]).include_clean is False
    assert _build(["--images", "x", "--clean"]).include_clean is True
    assert _build(["--images", "x", "--mode", "faithful"]).mode == "faithful"
    with pytest.raises(SystemExit):  # argparse refuses a value outside the field's choices
        _parser().parse_args(["--images", "x", "--mode", "careless"])
    with pytest.raises(SystemExit):  # the field's own name is not a flag once metadata renames it
        _parser().parse_args(["--images", "x", "--sizes", "4"])
    assert not hasattr(_parser().parse_args(["--images", "x"]), "figure_n")  # skipped: no flag


@pytest.mark.parametrize("argv, message", [
    (["--size", "8,x"], "--size '8,x': expected comma-separated int values"),
    (["--thetas", "0.5,high"], "--thetas '0.5,high': expected comma-separated float values"),
    (["--thetas", "nan"], "--thetas 'nan': expected comma-separated float values"),
    (["--oracle-arg", "regions"], "--oracle-arg 'regions': expected KEY=VALUE"),
])
def test_a_bad_item_is_an_error_naming_the_flag(argv, message):
    with pytest.raises(EftclipError) as info:
        _build(["--images", "x", *argv])
    assert str(info.value) == message


def test_precedence_default_then_yaml_then_flag(tmp_path):
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text("images: from-yaml\ntau: 7\nthetas: [0.2]\noracle_args: {regions: foreground, seed: 1}\n")
    cfg = _build(["--config", str(cfg_file), "--tau", "9", "--oracle-arg", "seed=2"])
    assert cfg.images == "from-yaml"  # YAML over the (missing) default
    assert cfg.tau == 9  # flag over YAML
    assert cfg.thetas == (0.2,)  # YAML over the default, a list read as the field's tuple
    assert cfg.sizes == (8, 16) and cfg.mode == "robust"  # neither: the dataclass default
    assert cfg.oracle_args == {"regions": "foreground", "seed": 2}  # mappings merge key by key, the flag wins
    # values other flags imply sit between the YAML and the field's own flag
    cfg = _build(["--config", str(cfg_file), "--oracle-arg", "seed=2"],
                 implied={"oracle_args": {"seed": 3, "model_path": "m"}})
    assert cfg.oracle_args == {"regions": "foreground", "seed": 2, "model_path": "m"}
    # a tuple flag replaces the YAML's list instead of adding to it
    assert _build(["--config", str(cfg_file), "--thetas", "0.4"]).thetas == (0.4,)


def test_required_field_on_the_command_line_or_in_the_config(tmp_path):
    with pytest.raises(EftclipError, match=r"^--images is required \(on the command line or in --config\)$"):
        _build(["--tau", "3"])
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text("images: y\n")
    assert _build(["--config", str(cfg_file)]).images == "y"


def test_help_shows_the_comment_and_the_dataclass_default_once():
    text = " ".join(_parser().format_help().split())
    assert "--tau TAU list length (default: 5)" in text
    assert "--size INT,... patch sides (default: 8,16); comma-separated, repeatable" in text
    assert "--labels STR,... labels always kept (default: none)" in text
    assert "--images IMAGES what to look at (required, here or in --config)" in text
    assert "--mode {robust,faithful} how to decide (default: robust)" in text
    assert "--clean, --no-clean also the untouched images (default: True)" in text
    assert text.count("(default: 5)") == 1  # figure_n's default is not shown: it has no flag
