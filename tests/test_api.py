"""The public Python API: light to import, documented, its tour runs for real, and the CLI is a wrapper over it."""
from __future__ import annotations

import csv
import doctest
import inspect
import io
import json
import shutil
import subprocess
import sys

import pytest

import retreino
from conftest import CATS_VS_DOGS, ROOT, WATER_BOTTLES
from retreino.cli import main as cli

NAMES = "cats=Gato,dogs=Cachorro"


def test_import_and_help_do_not_load_tensorflow():
    code = (
        "import sys, retreino\n"
        "names = dir(retreino); retreino.__all__\n"
        "from retreino.cli import build_parser\n"
        "assert 'usage: retreino' in build_parser().format_help()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib'))\n"
        "print(len(names), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    count, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]", f"import retreino loaded {heavy}"
    assert int(count) >= len(retreino.__all__)


def test_public_names_resolve_and_are_documented():
    assert set(retreino._LAZY) <= set(dir(retreino))
    for name in retreino.__all__:
        obj = getattr(retreino, name)
        if callable(obj):
            assert inspect.getdoc(obj), f"retreino.{name} has no docstring"
    # The steps of the notebook, each a function with an example in its docstring.
    for name in ("load_model", "load_dataset", "train", "evaluate", "predict", "predict_folder",
                 "show_predictions", "show_images"):
        fn = getattr(retreino, name)
        assert inspect.isfunction(fn), name
        assert name in retreino.__doc__, f"the API tour does not show retreino.{name}"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        retreino.trian  # noqa: B018


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """Run the doctests of `retreino/__init__.py` on a tiny copy of cats_vs_dogs; keep their variables."""
    tmp = tmp_path_factory.mktemp("api")
    data = tmp / "data"
    for split, n in (("train", 8), ("validation", 4), ("test", 4)):
        for cls in ("cats", "dogs"):
            dst = data / split / cls
            dst.mkdir(parents=True)
            for f in sorted((CATS_VS_DOGS / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(f, dst / f.name)
    runs = tmp / "runs"
    runs.mkdir()
    globs = {"retreino": retreino, "MODEL": WATER_BOTTLES, "DATA": data, "RUNS": runs,
             "IMAGE": sorted((data / "test" / "cats").glob("*.jpg"))[0]}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    tests = doctest.DocTestFinder().find(retreino, "retreino", extraglobs=globs)
    for test in tests:
        runner.run(test, out=report.write, clear_globs=False)
    tour_globs = next(t.globs for t in tests if t.name == "retreino")
    return runner.summarize(verbose=False), report.getvalue(), tour_globs


def test_docstring_examples_run(tour):
    results, report, _ = tour
    assert results.failed == 0, report
    assert results.attempted >= 25


def test_tour_saves_every_figure_in_the_run_directory(tour):
    _, _, g = tour
    run = g["run"]
    assert isinstance(run, retreino.Run)
    for name in ("learning_curves.png", "confusion_matrix.png", "predictions_scatter.png", "grid.png"):
        png = run.dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # What the notebook displays inline is a real matplotlib Figure with axes.
    from matplotlib.figure import Figure

    assert isinstance(g["fig"], Figure) and g["fig"].axes
    assert isinstance(g["result"], retreino.EvaluationResult)
    assert isinstance(g["gato"], retreino.Prediction)


def test_cli_predict_is_the_api(tour, tmp_path, capsys):
    _, _, g = tour
    run, best, folder = g["run"], g["best"], g["DATA"] / "test"
    api = tmp_path / "api.csv"
    rows = retreino.predict_folder(best, folder, out=api, names=NAMES, progress=False)
    assert cli(["predict", str(run.dir), str(folder), "--out", str(tmp_path / "cli.csv"), "--names", NAMES]) == 0
    assert (tmp_path / "cli.csv").read_text() == api.read_text()
    with open(api, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["predicted"] for r in table] == [r["predicted"] for r in rows]
    assert {r["true"] for r in table} == {"Gato", "Cachorro"}

    # One image: the CLI prints what str(retreino.predict(...)) gives.
    image = g["IMAGE"]
    assert cli(["predict", str(run.dir), str(image), "--names", NAMES, "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == str(retreino.predict(best, image, names=NAMES, top_k=2)).strip()


def test_cli_evaluate_is_the_api(tour, tmp_path):
    _, _, g = tour
    run = g["run"]
    result = retreino.evaluate(g["best"], run=run.dir, out=tmp_path / "api", progress=False, report=False)
    assert cli(["evaluate", "--run", str(run.dir), "--out", str(tmp_path / "cli")]) == 0
    from_cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    from_api = json.loads((tmp_path / "api" / "metrics.json").read_text())
    assert from_cli == from_api
    assert from_cli["accuracy"] == pytest.approx(result.accuracy)
    assert from_cli["confusion_matrix"] == result.confusion_matrix.tolist()


def test_bad_input_raises_one_line_retreino_errors(tour, tmp_path):
    _, _, g = tour
    with pytest.raises(retreino.RetreinoError) as info:
        retreino.train(model=g["MODEL"], data=tmp_path / "no-such-folder", runs_dir=tmp_path)
    assert "\n" not in str(info.value) and "no-such-folder" in str(info.value)
    with pytest.raises(retreino.RetreinoError, match="missing.jpg"):
        retreino.predict(g["best"], tmp_path / "missing.jpg")
    with pytest.raises(retreino.RetreinoError, match="no such file or folder"):
        retreino.show_images(tmp_path / "nothing-here")
    with pytest.raises(retreino.RetreinoError, match="kittens"):
        retreino.predict(g["best"], g["IMAGE"], names={"kittens": "Gato"})
    assert not list(tmp_path.glob("*/config.json")), "a failed train must not leave a run directory"


def test_show_images_takes_turns_between_classes(tmp_path):
    folder = tmp_path / "pets"
    for cls, n in (("cats", 5), ("dogs", 2)):
        (folder / cls).mkdir(parents=True)
        for f in sorted((CATS_VS_DOGS / "test" / cls).glob("*.jpg"))[:n]:
            shutil.copy(f, folder / cls / f.name)
    fig = retreino.show_images(folder, n=6, path=tmp_path / "look.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["cats", "dogs", "cats", "dogs", "cats", "cats"]
    assert fig.get_suptitle() == "6 of 7 images (cats, dogs)"
    assert (tmp_path / "look.png").stat().st_size > 10_000
    # A list of paths has no classes: captions are the file names.
    paths = sorted((folder / "dogs").glob("*.jpg"))
    fig = retreino.show_images(paths)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [p.name for p in paths]
    fig = retreino.show_images(paths[0])
    assert [ax.get_title() for ax in fig.axes] == [paths[0].name]


# The public functions (and result classes) whose own docstring examples must run as written.
WITH_EXAMPLES = ("load_model", "save_model", "load_dataset", "train", "plot_learning_curves", "evaluate",
                 "predict", "predict_folder", "show_predictions", "show_images", "Prediction", "EvaluationResult",
                 "explain", "explanation")


def test_every_public_function_has_an_example_that_runs(tour, tmp_path):
    """Each docstring example runs under doctest, with the tour's paths and its finished run as RUN."""
    _, _, tour_globs = tour
    names = {name: getattr(retreino, name) for name in (*retreino._LAZY, "show_images")}
    base = {**names, "retreino": retreino, "MODEL": tour_globs["MODEL"], "DATA": tour_globs["DATA"],
            "IMAGE": tour_globs["IMAGE"], "RUN": tour_globs["run"].dir}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for name in WITH_EXAMPLES:
        doc = inspect.getdoc(getattr(retreino, name))
        assert "+SKIP" not in doc, f"retreino.{name} has an example that is skipped"
        runs = tmp_path / name
        runs.mkdir()
        test = parser.get_doctest(doc, {**base, "RUNS": runs}, f"retreino.{name}", None, 0)
        assert test.examples, f"retreino.{name} has no example in its docstring"
        runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, report.getvalue()
    assert results.attempted >= 2 * len(WITH_EXAMPLES)
